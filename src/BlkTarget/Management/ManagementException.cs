namespace BlkTarget.Management;

/// <summary>
/// Stable JSON-RPC error codes of the management interface. The standard JSON-RPC 2.0 codes (-32700 to -32600)
/// keep their meaning; BlkTarget's own are -32001 to -32006 and never change meaning.
/// </summary>
public enum RpcErrorCode
{
    ParseError = -32700,
    InvalidRequest = -32600,
    MethodNotFound = -32601,
    /// <summary>A parameter is missing, unknown, of the wrong type or out of range (one line says which).</summary>
    InvalidParams = -32602,
    InternalError = -32603,
    /// <summary>No disk or export of that name.</summary>
    NotFound = -32001,
    /// <summary>A disk or export of that name exists, or the socket is another export's.</summary>
    AlreadyExists = -32002,
    /// <summary>The disk is attached (delete), or attached writable elsewhere and not shared (attach).</summary>
    InUse = -32003,
    /// <summary>The backend or the socket could not be opened (file missing, locked, socket in use...).</summary>
    ResourceError = -32004,
    /// <summary>The change could not be written to the config file; it was undone.</summary>
    PersistFailed = -32005,
    /// <summary>The disk's backend cannot do that (e.g. grow a hugetlb RAM disk or an image).</summary>
    Unsupported = -32006,
}

/// <summary>A management operation that was refused or failed; nothing was changed. Message: one line.</summary>
public sealed class ManagementException(RpcErrorCode code, string message) : Exception(message)
{
    public RpcErrorCode Code { get; } = code;
}
