using System.CommandLine;
using BlkTarget.Bench;
using BlkTarget.Commands;

namespace BlkTarget;

public static class Program
{
    public static int Main(string[] args)
    {
        var root = new RootCommand("BlkTarget: a vhost-user block storage target")
        {
            ServeCommand.Create(),
            ImageCommand.Create(),
            BenchCommand.Create(),
            ManagementCommands.Disk(),
            ManagementCommands.Export(),
            ManagementCommands.Lun(),
            ManagementCommands.Config(),
            ManagementCommands.Stats(),
            ManagementCommands.Qos(),
            Monitoring.Top.TopCommand.Create(),
        };
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
            return Fail($"{parse.Errors[0].Message} (see 'blktarget {string.Join(' ', args.Take(1))} --help')");
        return parse.Invoke();
    }

    /// <summary>Reports a problem the user can fix as one line on stderr; exit code 1.</summary>
    internal static int Fail(string message)
    {
        Console.Error.WriteLine($"blktarget: {message}");
        return 1;
    }
}
