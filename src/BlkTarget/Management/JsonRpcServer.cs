using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Management;

/// <summary>
/// JSON-RPC 2.0 over a Unix stream socket, one JSON text per line in each direction (so `socat` works).
/// Requests carry named params; a request without "id" is a notification (run, not answered); an array is a
/// batch. Calls from every client run one at a time. The socket file is mode 0600 and removed on dispose.
/// Errors are JSON-RPC error objects {code, message} with the codes of <see cref="RpcErrorCode"/>.
/// </summary>
public sealed class JsonRpcServer : IDisposable
{
    /// <summary>Longest request line accepted (bytes); a longer one closes that connection.</summary>
    public const int MaxLineBytes = 1 << 20;

    private readonly Socket _listener;
    private readonly ManagementMethods _methods;
    private readonly ILogger _log;
    private readonly Thread _acceptThread;
    private readonly object _dispatch = new();
    private readonly List<Socket> _clients = [];
    private volatile bool _stopping;

    private JsonRpcServer(string path, Socket listener, ManagementMethods methods, ILogger log)
    {
        SocketPath = path;
        _listener = listener;
        _methods = methods;
        _log = log;
        _acceptThread = new Thread(AcceptLoop) { IsBackground = true, Name = "rpc accept" };
    }

    public string SocketPath { get; }

    /// <summary>Binds <paramref name="path"/> (replacing a stale socket file) and starts serving. Throws
    /// <see cref="IOException"/> when the path is taken by a live process or cannot be bound.</summary>
    public static JsonRpcServer Start(string path, ManagementMethods methods, ILogger log)
    {
        RpcSocketPath.Prepare(path);
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            listener.Bind(new UnixDomainSocketEndPoint(path));
            if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            listener.Listen(16);
        }
        catch (Exception e) when (e is SocketException or IOException or UnauthorizedAccessException)
        {
            listener.Dispose();
            throw new IOException($"cannot listen on rpc socket {path}: {e.Message}", e);
        }
        var server = new JsonRpcServer(path, listener, methods, log);
        server._acceptThread.Start();
        log.LogInformation("rpc: listening on {Socket}", path);
        return server;
    }

    private void AcceptLoop()
    {
        while (!_stopping)
        {
            Socket client;
            try
            {
                client = _listener.Accept();
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                if (!_stopping) _log.LogError("rpc: accept failed: {Error}", e.Message);
                return;
            }
            lock (_clients) _clients.Add(client);
            new Thread(() => Serve(client)) { IsBackground = true, Name = "rpc client" }.Start();
        }
    }

    private void Serve(Socket client)
    {
        try
        {
            using var stream = new NetworkStream(client, ownsSocket: false);
            var line = new List<byte>();
            var buffer = new byte[4096];
            while (true)
            {
                int n = stream.Read(buffer);
                if (n == 0) return;
                for (int i = 0; i < n; i++)
                {
                    if (buffer[i] != (byte)'\n')
                    {
                        line.Add(buffer[i]);
                        if (line.Count > MaxLineBytes) return;
                        continue;
                    }
                    string? reply = Handle(Encoding.UTF8.GetString(line.ToArray()));
                    line.Clear();
                    if (reply is not null) stream.Write(Encoding.UTF8.GetBytes(reply + "\n"));
                }
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
        }
        finally
        {
            lock (_clients) _clients.Remove(client);
            client.Dispose();
        }
    }

    /// <summary>Answers one line: a request, a notification (null: no answer) or a batch.</summary>
    public string? Handle(string line)
    {
        if (line.Trim().Length == 0) return null;
        JsonNode? request;
        try
        {
            request = JsonNode.Parse(line);
        }
        catch (JsonException e)
        {
            return Error(null, RpcErrorCode.ParseError, $"not JSON: {e.Message}").ToJsonString();
        }
        if (request is JsonArray batch)
        {
            if (batch.Count == 0) return Error(null, RpcErrorCode.InvalidRequest, "empty batch").ToJsonString();
            var replies = new JsonArray(batch.Select(HandleOne).Where(r => r is not null).ToArray());
            return replies.Count == 0 ? null : replies.ToJsonString();
        }
        return HandleOne(request)?.ToJsonString();
    }

    private JsonNode? HandleOne(JsonNode? request)
    {
        if (request is not JsonObject o || o["jsonrpc"]?.GetValueKind() != JsonValueKind.String || (string?)o["jsonrpc"] != "2.0"
            || o["method"] is not JsonValue methodValue || methodValue.GetValueKind() != JsonValueKind.String)
            return Error(IdOf(request), RpcErrorCode.InvalidRequest, "expected {\"jsonrpc\": \"2.0\", \"method\": ..., \"params\": {...}, \"id\": ...}");
        bool notification = !o.ContainsKey("id");
        var id = o["id"]?.DeepClone();
        string method = methodValue.GetValue<string>();
        JsonNode? result;
        try
        {
            JsonElement? parameters = o["params"] is { } p ? JsonDocument.Parse(p.ToJsonString()).RootElement : null;
            lock (_dispatch) result = _methods.Invoke(method, new RpcParams(parameters));
            _log.LogDebug("rpc: {Method} done", method);
        }
        catch (ManagementException e)
        {
            if (e.Code != RpcErrorCode.MethodNotFound) _log.LogWarning("rpc: {Method} refused: {Error}", method, e.Message);
            return notification ? null : Error(id, e.Code, e.Message);
        }
        catch (Exception e)
        {
            _log.LogError(e, "rpc: {Method} failed", method);
            return notification ? null : Error(id, RpcErrorCode.InternalError, $"internal error: {e.Message.ReplaceLineEndings(" ")}");
        }
        return notification ? null : new JsonObject { ["jsonrpc"] = "2.0", ["id"] = id, ["result"] = result };
    }

    private static JsonNode? IdOf(JsonNode? request) => request is JsonObject o ? o["id"]?.DeepClone() : null;

    private static JsonObject Error(JsonNode? id, RpcErrorCode code, string message) => new()
    {
        ["jsonrpc"] = "2.0",
        ["id"] = id,
        ["error"] = new JsonObject { ["code"] = (int)code, ["message"] = message },
    };

    /// <summary>Stops accepting, closes every client connection (a call in progress finishes first) and removes the socket file.</summary>
    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        _listener.Dispose();
        _acceptThread.Join(TimeSpan.FromSeconds(5));
        lock (_dispatch)
        lock (_clients)
        {
            foreach (var c in _clients)
            {
                try { c.Shutdown(SocketShutdown.Both); }
                catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
            }
        }
        try { File.Delete(SocketPath); }
        catch (IOException) { }
    }
}
