using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;

namespace BlkTarget.Management;

/// <summary>Calls one JSON-RPC method on a running target's management socket (the CLI client).</summary>
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
        socket.ReceiveTimeout = (int)(timeout ?? TimeSpan.FromMinutes(5)).TotalMilliseconds;
        var request = new JsonObject { ["jsonrpc"] = "2.0", ["id"] = 1, ["method"] = method, ["params"] = parameters };
        using var stream = new NetworkStream(socket, ownsSocket: false);
        stream.Write(Encoding.UTF8.GetBytes(request.ToJsonString() + "\n"));
        using var reader = new StreamReader(stream, Encoding.UTF8);
        string line = reader.ReadLine() ?? throw new IOException($"the target at {socketPath} closed the connection without answering");
        var reply = JsonNode.Parse(line) as JsonObject ?? throw new IOException("the target's answer is not a JSON object");
        if (reply["error"] is JsonObject error)
            throw new ManagementException((RpcErrorCode)(int)(error["code"] ?? 0), (string?)error["message"] ?? "unknown error");
        return reply["result"];
    }
}
