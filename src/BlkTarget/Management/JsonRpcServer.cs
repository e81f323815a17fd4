using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using StreamJsonRpc;
using StreamJsonRpc.Protocol;

namespace BlkTarget.Management;

/// <summary>
/// JSON-RPC 2.0 over a Unix stream socket, one JSON text per line in each direction (so `socat` works), served by
/// StreamJsonRpc: one <see cref="JsonRpc"/> per connection, every method of <see cref="ManagementMethods"/> taking
/// its named params as one object. A request without "id" is a notification (run, not answered); batches (arrays)
/// are not supported. Calls from every client run one at a time. The socket file is mode 0600 and removed on dispose.
/// Errors are JSON-RPC error objects {code, message} with the codes of <see cref="RpcErrorCode"/>.
/// </summary>
public sealed class JsonRpcServer : IDisposable
{
    private readonly Socket _listener;
    private readonly ManagementMethods _methods;
    private readonly ILogger _log;
    private readonly Thread _acceptThread;
    private readonly object _dispatch = new();
    private readonly List<JsonRpc> _clients = [];
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

    /// <summary>The wire format of both ends: newline-delimited JSON (Lf, not the library's default CrLf, so a reply
    /// is one plain line for socat and SPDK-style scripts), serialized by System.Text.Json.</summary>
    internal static JsonRpc Connect(Stream stream) => new(new LineHandler(stream) { NewLine = NewLineDelimitedMessageHandler.NewLineStyle.Lf });

    /// <summary>
    /// `echo REQUEST | socat - UNIX-CONNECT:...` closes its sending side right after the request, and StreamJsonRpc
    /// takes the end of input for the end of the connection, dropping replies not yet written. This handler reports
    /// the end of input only once every request read so far has been answered (a reply written and flushed).
    /// </summary>
    private sealed class LineHandler(Stream stream) : NewLineDelimitedMessageHandler(stream, stream, new SystemTextJsonFormatter())
    {
        private readonly object _lock = new();
        private int _unanswered;
        private TaskCompletionSource _answered = new();
        private bool _writingReply;

        protected override async ValueTask<JsonRpcMessage?> ReadCoreAsync(CancellationToken cancellationToken)
        {
            var message = await base.ReadCoreAsync(cancellationToken);
            if (message is JsonRpcRequest { IsResponseExpected: true })
            {
                lock (_lock)
                    if (_unanswered++ == 0) _answered = new(TaskCreationOptions.RunContinuationsAsynchronously);
            }
            else if (message is null)
            {
                Task answered;
                lock (_lock) answered = _unanswered == 0 ? Task.CompletedTask : _answered.Task;
                await answered.WaitAsync(cancellationToken);   // cancelled when the connection is disposed
            }
            return message;
        }

        // Writes are one at a time (the base class holds a semaphore across Write and FlushAsync).
        protected override void Write(JsonRpcMessage content, CancellationToken cancellationToken)
        {
            _writingReply = false;
            base.Write(content, cancellationToken);
            _writingReply = content is JsonRpcResult or JsonRpcError;
        }

        protected override async ValueTask FlushAsync(CancellationToken cancellationToken)
        {
            await base.FlushAsync(cancellationToken);
            if (!_writingReply) return;
            _writingReply = false;
            lock (_lock)
                if (--_unanswered == 0) _answered.TrySetResult();
        }
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
            var rpc = Connect(new NetworkStream(client, ownsSocket: true));
            foreach (string name in ManagementMethods.Names)
            {
                // Each name gets the same handler; UseSingleObjectParameterDeserialization hands it the whole "params"
                // object, which RpcParams checks (names, types, unknown keys) as it did before the library.
                Func<JsonElement?, JsonNode?> handler = new Method(this, name).Run;
                rpc.AddLocalRpcMethod(handler.Method, handler.Target, new JsonRpcMethodAttribute(name) { UseSingleObjectParameterDeserialization = true });
            }
            rpc.Disconnected += (_, e) =>
            {
                // The library answers nothing to a line it cannot take (not JSON, a batch): say why the client was dropped.
                if (e.Reason is not (DisconnectedReason.RemotePartyTerminated or DisconnectedReason.LocallyDisposed))
                    _log.LogWarning("rpc: connection closed: {Error}", e.Description);
                lock (_clients) _clients.Remove(rpc);
            };
            lock (_clients) _clients.Add(rpc);
            rpc.StartListening();
        }
    }

    /// <summary>One registered method name; "params" may be absent, hence the default.</summary>
    private sealed class Method(JsonRpcServer server, string name)
    {
        public JsonNode? Run(JsonElement? parameters = null) => server.Dispatch(name, parameters);
    }

    private JsonNode? Dispatch(string method, JsonElement? parameters)
    {
        try
        {
            JsonNode? result;
            lock (_dispatch) result = _methods.Invoke(method, new RpcParams(parameters));
            _log.LogDebug("rpc: {Method} done", method);
            return result;
        }
        catch (ManagementException e)
        {
            _log.LogWarning("rpc: {Method} refused: {Error}", method, e.Message);
            // LocalRpcException is how StreamJsonRpc sends a chosen {code, message} (no data) instead of its own.
            throw new LocalRpcException(e.Message) { ErrorCode = (int)e.Code };
        }
        catch (Exception e)
        {
            _log.LogError(e, "rpc: {Method} failed", method);
            throw new LocalRpcException($"internal error: {e.Message.ReplaceLineEndings(" ")}") { ErrorCode = (int)RpcErrorCode.InternalError };
        }
    }

    /// <summary>Stops accepting, closes every client connection (a call in progress finishes first) and removes the socket file.</summary>
    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        _listener.Dispose();
        _acceptThread.Join(TimeSpan.FromSeconds(5));
        List<JsonRpc> clients;
        // Taking the dispatch lock waits for a call in progress; the connections are closed outside it, so closing
        // never waits on a call that is itself waiting for the lock.
        lock (_dispatch)
        lock (_clients) clients = [.. _clients];
        foreach (var rpc in clients) rpc.Dispose();
        try { File.Delete(SocketPath); }
        catch (IOException) { }
    }
}
