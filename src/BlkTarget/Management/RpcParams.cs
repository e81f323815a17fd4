using System.Text.Json;

namespace BlkTarget.Management;

/// <summary>
/// The named parameters of one JSON-RPC call (an object, or absent). Every getter reports a missing or mistyped
/// parameter as <see cref="RpcErrorCode.InvalidParams"/>; <see cref="RejectUnknown"/> refuses names no getter asked for,
/// so a typo is an error rather than a silent default.
/// </summary>
public sealed class RpcParams
{
    private readonly Dictionary<string, JsonElement> _values = [];
    private readonly HashSet<string> _asked = [];

    public RpcParams(JsonElement? parameters)
    {
        if (parameters is not { } p || p.ValueKind == JsonValueKind.Null) return;
        if (p.ValueKind != JsonValueKind.Object) throw Invalid("params must be an object (named parameters)");
        foreach (var property in p.EnumerateObject()) _values[property.Name] = property.Value;
    }

    private static ManagementException Invalid(string message) => new(RpcErrorCode.InvalidParams, message);

    private JsonElement? Get(string name)
    {
        _asked.Add(name);
        return _values.TryGetValue(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;
    }

    public string RequiredString(string name) => OptionalString(name) ?? throw Invalid($"parameter '{name}' is required");

    public string? OptionalString(string name) => Get(name) switch
    {
        null => null,
        { ValueKind: JsonValueKind.String } v => v.GetString(),
        _ => throw Invalid($"parameter '{name}' must be a string"),
    };

    public bool Bool(string name, bool fallback) => Get(name) switch
    {
        null => fallback,
        { ValueKind: JsonValueKind.True } => true,
        { ValueKind: JsonValueKind.False } => false,
        _ => throw Invalid($"parameter '{name}' must be true or false"),
    };

    public int Int(string name, int fallback) => Get(name) switch
    {
        null => fallback,
        { ValueKind: JsonValueKind.Number } v when v.TryGetInt32(out int i) => i,
        _ => throw Invalid($"parameter '{name}' must be an integer"),
    };

    /// <summary>A required size: a number of bytes, or a string with binary units ("20G", "512MiB").</summary>
    public ulong Size(string name) => Get(name) switch
    {
        null => throw Invalid($"parameter '{name}' is required"),
        { ValueKind: JsonValueKind.Number } v when v.TryGetUInt64(out ulong bytes) && bytes > 0 => bytes,
        { ValueKind: JsonValueKind.String } v when Configuration.SizeParser.TryParse(v.GetString()!, out ulong bytes) && bytes > 0 => bytes,
        _ => throw Invalid($"parameter '{name}' must be a size: bytes, or a string such as 20G"),
    };

    /// <summary>An optional rate (QoS): a count, or for byte rates a string with binary units ("10M"); 0 is allowed.</summary>
    public ulong? OptionalRate(string name) => Get(name) switch
    {
        null => null,
        { ValueKind: JsonValueKind.Number } v when v.TryGetUInt64(out ulong n) => n,
        { ValueKind: JsonValueKind.String } v when Configuration.SizeParser.TryParse(v.GetString()!, out ulong n) => n,
        _ => throw Invalid($"parameter '{name}' must be a non-negative integer (byte rates may be strings such as 10M)"),
    };

    /// <summary>An array of objects, each read as its own parameter set (checked for unknown names by the caller).</summary>
    public IReadOnlyList<RpcParams> Objects(string name)
    {
        var value = Get(name) ?? throw Invalid($"parameter '{name}' is required");
        if (value.ValueKind != JsonValueKind.Array) throw Invalid($"parameter '{name}' must be an array of objects");
        return value.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Object ? new RpcParams(e)
            : throw Invalid($"parameter '{name}' must be an array of objects")).ToList();
    }

    /// <summary>Throws InvalidParams naming the first parameter no getter asked for.</summary>
    public void RejectUnknown()
    {
        foreach (var name in _values.Keys)
            if (!_asked.Contains(name)) throw Invalid($"unknown parameter '{name}'");
    }
}
