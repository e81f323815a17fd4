using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Interop;

/// <summary>
/// recvmsg/sendmsg with SCM_RIGHTS over a connected Unix stream socket: how vhost-user passes memory,
/// eventfds and other descriptors along with a message. .NET's Socket owns the socket fd; this class only
/// borrows it for the two calls .NET does not offer.
/// </summary>
public static unsafe partial class UnixSocketFds
{
    public const int MaxFds = 8;
    private const int SOL_SOCKET = 1;
    private const int SCM_RIGHTS = 1;
    private const int MSG_CTRUNC = 0x8;
    private const int MSG_NOSIGNAL = 0x4000;
    private const int MSG_CMSG_CLOEXEC = 0x40000000;
    private const int CmsgHeaderSize = 16;                       // cmsg_len (size_t), cmsg_level, cmsg_type
    private const int ControlSize = CmsgHeaderSize + MaxFds * 4;  // CMSG_SPACE(8 fds) = 16 + 32

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MsgHdr
    {
        public void* Name;
        public uint NameLength;
        public IoVec* Iov;
        public nuint IovLength;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint recvmsg(int fd, MsgHdr* msg, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint sendmsg(int fd, MsgHdr* msg, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint recv(int fd, void* buf, nuint len, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int socketpair(int domain, int type, int protocol, int* fds);

    private const int AF_UNIX = 1, SOCK_STREAM = 1, SOCK_CLOEXEC = 0x80000;

    /// <summary>Hands a socket fd received from a peer (SCM_RIGHTS) to a .NET <see cref="Socket"/>, which owns it
    /// from then on; <paramref name="fd"/> is left invalid.</summary>
    public static Socket Adopt(OwnedFd fd)
    {
        var handle = new SafeSocketHandle(fd.DangerousGetHandle(), ownsHandle: true);
        fd.SetHandleAsInvalid();
        return new Socket(handle);
    }

    /// <summary>A connected pair of Unix stream sockets (socketpair(2)), e.g. the backend request channel a
    /// frontend creates and hands one end of to the backend.</summary>
    /// <exception cref="IOException">socketpair failed.</exception>
    public static (Socket First, Socket Second) CreatePair()
    {
        int* fds = stackalloc int[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) throw Errno.Exception("socketpair");
        return (Adopt(new OwnedFd(fds[0])), Adopt(new OwnedFd(fds[1])));
    }

    /// <summary>Outcome of a receive: bytes read, 0 at orderly shutdown.</summary>
    public readonly record struct ReceiveResult(int Bytes, bool ControlTruncated);

    /// <summary>
    /// Receives up to buffer.Length bytes (one recvmsg call) and any descriptors sent with them. Received fds
    /// are appended to <paramref name="fds"/>, each in its own owner, even when the caller will reject the
    /// message: the caller disposes what it does not keep.
    /// </summary>
    public static ReceiveResult Receive(Socket socket, Span<byte> buffer, List<OwnedFd> fds)
    {
        byte* control = stackalloc byte[ControlSize];
        new Span<byte>(control, ControlSize).Clear();
        fixed (byte* data = buffer)
        {
            var iov = new IoVec { Base = data, Length = (nuint)buffer.Length };
            var msg = new MsgHdr { Iov = &iov, IovLength = 1, Control = control, ControlLength = ControlSize };
            nint n;
            bool added = false;
            var handle = socket.SafeHandle;
            handle.DangerousAddRef(ref added);
            try
            {
                do n = recvmsg((int)handle.DangerousGetHandle(), &msg, MSG_CMSG_CLOEXEC);
                while (n < 0 && Errno.Last == Errno.EINTR);
            }
            finally
            {
                if (added) handle.DangerousRelease();
            }
            if (n < 0) throw Errno.Exception("recvmsg");
            CollectFds(control, (int)msg.ControlLength, fds);
            return new ReceiveResult((int)n, (msg.Flags & MSG_CTRUNC) != 0);
        }
    }

    private static void CollectFds(byte* control, int controlLength, List<OwnedFd> fds)
    {
        int offset = 0;
        while (offset + CmsgHeaderSize <= controlLength)
        {
            ulong cmsgLen = *(ulong*)(control + offset);
            int level = *(int*)(control + offset + 8);
            int type = *(int*)(control + offset + 12);
            if (cmsgLen < CmsgHeaderSize || cmsgLen > (ulong)(controlLength - offset)) break;
            if (level == SOL_SOCKET && type == SCM_RIGHTS)
            {
                int count = (int)(cmsgLen - CmsgHeaderSize) / 4;
                for (int i = 0; i < count; i++) fds.Add(new OwnedFd(*(int*)(control + offset + CmsgHeaderSize + i * 4)));
            }
            offset += (int)((cmsgLen + 7) & ~7UL);
        }
    }

    /// <summary>Reads exactly buffer.Length bytes (no descriptors expected); false if the peer closed first.</summary>
    public static bool ReceiveExactly(Socket socket, Span<byte> buffer)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = socket.Receive(buffer[done..]);
            if (n == 0) return false;
            done += n;
        }
        return true;
    }

    /// <summary>Sends all of <paramref name="data"/>, attaching <paramref name="fds"/> to the first byte.</summary>
    public static void Send(Socket socket, ReadOnlySpan<byte> data, ReadOnlySpan<int> fds)
    {
        if (fds.Length > MaxFds) throw new ArgumentException($"at most {MaxFds} descriptors per message", nameof(fds));
        byte* control = stackalloc byte[ControlSize];
        new Span<byte>(control, ControlSize).Clear();
        int controlLength = 0;
        if (fds.Length > 0)
        {
            *(ulong*)control = (ulong)(CmsgHeaderSize + fds.Length * 4);
            *(int*)(control + 8) = SOL_SOCKET;
            *(int*)(control + 12) = SCM_RIGHTS;
            for (int i = 0; i < fds.Length; i++) *(int*)(control + CmsgHeaderSize + i * 4) = fds[i];
            controlLength = CmsgHeaderSize + ((fds.Length * 4 + 7) & ~7);
        }
        fixed (byte* p = data)
        {
            int sent = 0;
            bool added = false;
            var handle = socket.SafeHandle;
            handle.DangerousAddRef(ref added);
            try
            {
                while (sent < data.Length || (sent == 0 && data.Length == 0))
                {
                    var iov = new IoVec { Base = p + sent, Length = (nuint)(data.Length - sent) };
                    var msg = new MsgHdr { Iov = &iov, IovLength = 1, Control = sent == 0 ? control : null, ControlLength = sent == 0 ? (nuint)controlLength : 0 };
                    nint n = sendmsg((int)handle.DangerousGetHandle(), &msg, MSG_NOSIGNAL);
                    if (n < 0)
                    {
                        if (Errno.Last == Errno.EINTR) continue;
                        throw Errno.Exception("sendmsg");
                    }
                    sent += (int)n;
                    if (data.Length == 0) break;
                }
            }
            finally
            {
                if (added) handle.DangerousRelease();
            }
        }
    }
}
