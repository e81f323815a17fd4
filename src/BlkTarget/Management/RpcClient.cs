using System.Net.Sockets;
using System.Text.Json.Nodes;
using StreamJsonRpc;

namespace BlkTarget.Management;

/// <summary>Calls one JSON-RPC method on a running target's management socket (the CLI client), with StreamJsonRpc
/// speaking the same newline-delimited JSON as the server.</summary>
public static class RpcClient
{
    /// <summary>Sends {method, params} and returns "result". Throws <see cref="ManagementException"/> carrying the
    /// target's error code and message, or <see cref="IOException"/> when the socket cannot be reached.</summary>
    public static JsonNode? Call(string socketPath, string method, JsonObject parameters, TimeSpan? timeout = null)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Connect(new UnixDomainSocketEndPoint(socketPath));
        }
        catch (SocketException e)
        {
            // A missing path reports EADDRNOTAVAIL ("Cannot assign requested address"): say what it means.
            string why = File.Exists(socketPath) ? e.Message : "no such socket";
            throw new IOException($"cannot reach the target at {socketPath}: {why} (is 'blktarget serve' running? --rpc-socket)", e);
        }
        using var rpc = JsonRpcServer.Connect(new NetworkStream(socket, ownsSocket: false));
        rpc.StartListening();
        // A dictionary of object values is what the library sends as named params ("params": {...}).
        var named = parameters.ToDictionary(kv => kv.Key, kv => (object?)kv.Value);
        var wait = timeout ?? TimeSpan.FromMinutes(5);
        try
        {
            // The CLI is synchronous: block on the one call.
            return rpc.InvokeWithParameterObjectAsync<JsonNode?>(method, named).WaitAsync(wait).GetAwaiter().GetResult();
        }
        catch (RemoteRpcException e) when (e.ErrorCode is { } code)
        {
            // The base type: the library picks a subclass by code (-32602 "method not found", -32003 "serialization
            // failure"), but to us every code is just RpcErrorCode.
            throw new ManagementException((RpcErrorCode)(int)code, e.Message);
        }
        catch (ConnectionLostException e)
        {
            throw new IOException($"the target at {socketPath} closed the connection without answering", e);
        }
        catch (TimeoutException e)
        {
            throw new IOException($"the target at {socketPath} did not answer within {wait.TotalSeconds:0} s", e);
        }
    }
}
