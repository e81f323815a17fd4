using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Running;

namespace BlkTarget.Benchmarks;

/// <summary>
/// Micro-benchmarks of the data path. Examples (see bench/README.md):
///   dotnet run -c Release --project bench/BlkTarget.Benchmarks -- --filter '*'
///   dotnet run -c Release --project bench/BlkTarget.Benchmarks -- --filter '*Dispatch*' --job short
/// </summary>
public static class Program
{
    public static void Main(string[] args)
    {
        var config = DefaultConfig.Instance.AddDiagnoser(MemoryDiagnoser.Default);
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args, config);
    }
}
