using System.Reflection;
using System.Runtime.InteropServices;
using BlkTarget.Storage.Interop;

namespace BlkTarget.Vhost.Tests.Interop;

/// <summary>
/// There is one native-interop layer (BlkTarget.Storage.Interop) and the vhost layer uses it: one fd owner, one
/// declaration of each basic fd call. These fail when a second copy creeps back in.
/// </summary>
public sealed class NativeLayerShapeTests
{
    private static readonly Assembly Storage = typeof(OwnedFd).Assembly;
    private static readonly Assembly Vhost = typeof(Protocol.VhostUserServer).Assembly;

    /// <summary>Every P/Invoke stub in an assembly, as (declaring type, native entry point).</summary>
    private static IEnumerable<(Type Type, string EntryPoint)> Imports(Assembly assembly) =>
        from type in assembly.GetTypes()
        from method in type.GetMethods(BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly)
        let import = method.GetCustomAttribute<DllImportAttribute>()
        where import is not null
        select (type, import.EntryPoint ?? method.Name);

    private static Type Outermost(Type type) => type.DeclaringType is null ? type : Outermost(type.DeclaringType);

    [Fact]
    public void The_vhost_layer_declares_no_native_calls_of_its_own() => Assert.Empty(Imports(Vhost));

    [Theory]
    [InlineData("close")]
    [InlineData("read")]
    [InlineData("write")]
    [InlineData("fcntl")]
    [InlineData("eventfd")]
    [InlineData("epoll_create1")]
    [InlineData("memfd_create")]
    public void Each_basic_fd_call_is_declared_once_in_the_interop_layer(string entryPoint)
    {
        var declaringTypes = Imports(Storage).Where(i => i.EntryPoint == entryPoint).Select(i => Outermost(i.Type)).ToList();
        var type = Assert.Single(declaringTypes);
        Assert.Equal("BlkTarget.Storage.Interop", type.Namespace);
    }

    [Fact]
    public void OwnedFd_is_the_only_safe_handle_that_owns_a_file_descriptor()
    {
        // The others own memory (mappings, aligned buffers) or librados/librbd/libnbd handles, never an fd of ours
        // (an nbd handle's socket is libnbd's, closed by nbd_close).
        string[] expected =
        [
            "BlkTarget.Storage.Interop.EnterableHandle",
            "BlkTarget.Storage.Interop.MappedMemory",
            "BlkTarget.Storage.Interop.NativeBuffer",
            "BlkTarget.Storage.Interop.NbdHandle",
            "BlkTarget.Storage.Interop.OwnedFd",
            "BlkTarget.Storage.Interop.RadosHandle",
            "BlkTarget.Storage.Interop.RadosIoCtxHandle",
            "BlkTarget.Storage.Interop.RbdImageHandle",
            "BlkTarget.Storage.IoUring.RingMapping",
        ];
        var handles = Storage.GetTypes().Concat(Vhost.GetTypes())
            .Where(t => t.IsSubclassOf(typeof(SafeHandle)))
            .Select(t => t.FullName!)
            .Order(StringComparer.Ordinal);
        Assert.Equal(expected, handles);
    }
}
