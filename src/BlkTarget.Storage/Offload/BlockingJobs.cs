namespace BlkTarget.Storage.Offload;

/// <summary>Work that may block (fsync, waiting), run on a <see cref="BlockingJobQueue"/>'s thread, never on a reactor.</summary>
public interface IBlockingJob
{
    /// <summary>Runs on the helper thread; the status completes the operation on the submitting reactor.</summary>
    BlockStatus Run();
}

/// <summary>
/// A helper thread (an <see cref="OffloadThread{TJob}"/>, started on first use) that runs <see cref="IBlockingJob"/>s
/// one after another in submission order, for an owner such as a logical unit's persistent reservation state.
/// Completions go back to the submitting reactor through a <see cref="BlockingJobChannel"/>.
/// </summary>
public sealed class BlockingJobQueue(string name) : IDisposable
{
    private readonly Worker _worker = new(name);

    internal void Enqueue(IoContext io, int target, ulong tag, IBlockingJob job) => _worker.Enqueue(new Job(io, target, tag, job));

    /// <summary>Runs the jobs already queued (their completions are posted), then stops the thread.</summary>
    public void Dispose() => _worker.Dispose();

    private readonly record struct Job(IoContext Io, int Target, ulong Tag, IBlockingJob Work);

    private sealed class Worker(string name) : OffloadThread<Job>(name)
    {
        protected override void Handle(in Job job)
        {
            BlockStatus status;
            try
            {
                status = job.Work.Run();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                status = BlockStatus.IoError;
            }
            job.Io.PostCompletion(job.Target, job.Tag, (int)status);
        }
    }
}

/// <summary>
/// A reactor's way to hand <see cref="IBlockingJob"/>s to a <see cref="BlockingJobQueue"/> and hear back, like a block
/// channel: <see cref="IBlockCompletionSink.Complete"/> is called on the reactor thread with the job's tag and status.
/// Not thread-safe: only the owning reactor calls it. Dispose only when <see cref="InFlight"/> is 0.
/// </summary>
public sealed class BlockingJobChannel : IIoCompletionTarget, IDisposable
{
    private readonly IoContext _io;
    private readonly IBlockCompletionSink _sink;
    private readonly int _target;
    private bool _faulted;

    public BlockingJobChannel(IoContext io, IBlockCompletionSink sink)
    {
        _io = io;
        _sink = sink;
        _target = io.AddTarget(this);
    }

    /// <summary>Jobs handed over and not completed yet.</summary>
    public int InFlight { get; private set; }

    /// <summary>Queues <paramref name="job"/> on <paramref name="queue"/>; its completion reports <paramref name="tag"/>.</summary>
    public void Run(BlockingJobQueue queue, ulong tag, IBlockingJob job)
    {
        InFlight++;
        _io.BeginPosted(_target);
        queue.Enqueue(_io, _target, tag, job);
    }

    void IIoCompletionTarget.OnIoCompleted(ulong tag, int result)
    {
        InFlight--;
        if (!_faulted) _sink.Complete(tag, (BlockStatus)result);
    }

    void IIoCompletionTarget.OnSqeAvailable(ulong tag) { }

    int IIoCompletionTarget.OnPoll() => 0;

    void IIoCompletionTarget.OnFault(Exception error)
    {
        _faulted = true;
        _sink.ChannelFaulted(error);
    }

    public void Dispose()
    {
        if (InFlight == 0) _io.RemoveTarget(_target);
    }
}
