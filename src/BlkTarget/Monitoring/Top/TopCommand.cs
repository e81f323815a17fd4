using System.CommandLine;
using System.Text.Json.Nodes;
using BlkTarget.Management;
using Spectre.Console;

namespace BlkTarget.Monitoring.Top;

/// <summary>
/// `blktarget top [--once] [--interval SECONDS] [--rpc-socket PATH]`: a live view of a running target
/// (<see cref="TopFrame"/>), redrawn every interval from two `stats` results; q, Esc or Ctrl+C quits and restores the
/// terminal. --once waits one interval and prints one frame (for scripts). Errors: `blktarget: ...`, exit 1.
/// </summary>
public static class TopCommand
{
    public static Command Create()
    {
        var rpcSocket = new Option<string?>("--rpc-socket") { Description = "The target's management socket (default as for serve)" };
        var once = new Option<bool>("--once") { Description = "Print one frame after one interval and exit" };
        var interval = new Option<double>("--interval") { Description = "Seconds between frames", DefaultValueFactory = _ => 1.0 };
        var command = new Command("top", "Live view of a running target: IOPS, MiB/s, latency, in flight per export, reactor load")
        {
            rpcSocket, once, interval,
        };
        command.SetAction(parse =>
        {
            string socket = parse.GetValue(rpcSocket) ?? RpcSocketPath.Default();
            var period = TimeSpan.FromSeconds(Math.Clamp(parse.GetValue(interval), 0.1, 3600));
            try
            {
                if (parse.GetValue(once)) return Once(socket, period);
                return Live(socket, period);
            }
            catch (ManagementException e)
            {
                return Program.Fail(e.Message);
            }
            catch (IOException e)
            {
                return Program.Fail(e.Message);
            }
        });
        return command;
    }

    private static TopSample Sample(string socket) =>
        TopSample.Parse(RpcClient.Call(socket, "stats", new JsonObject { ["buckets"] = true })!);

    private static int Once(string socket, TimeSpan period)
    {
        var before = Sample(socket);
        Thread.Sleep(period);
        int width = Console.IsOutputRedirected ? 120 : Math.Max(80, Console.WindowWidth);
        Console.Write(TopFrame.Render(before, Sample(socket), width));
        return 0;
    }

    private static int Live(string socket, TimeSpan period)
    {
        using var quit = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;
            quit.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        try
        {
            var before = Sample(socket);
            AnsiConsole.AlternateScreen(() =>
            {
                AnsiConsole.Live(new Text("blktarget top - first interval ...")).Start(live =>
                {
                    while (!quit.IsCancellationRequested)
                    {
                        if (WaitForQuit(period, quit.Token)) break;
                        var after = Sample(socket);
                        live.UpdateTarget(TopFrame.Build(before, after));
                        before = after;
                    }
                });
            });
            return 0;
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
    }

    /// <summary>Waits <paramref name="period"/>; true when q/Q/Esc was pressed or Ctrl+C cancelled.</summary>
    private static bool WaitForQuit(TimeSpan period, CancellationToken cancelled)
    {
        var end = DateTime.UtcNow + period;
        while (DateTime.UtcNow < end)
        {
            if (cancelled.IsCancellationRequested) return true;
            if (!Console.IsInputRedirected && Console.KeyAvailable && Console.ReadKey(intercept: true).Key is ConsoleKey.Q or ConsoleKey.Escape) return true;
            Thread.Sleep(50);
        }
        return cancelled.IsCancellationRequested;
    }
}
