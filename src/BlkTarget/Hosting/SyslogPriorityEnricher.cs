using Serilog.Core;
using Serilog.Events;

namespace BlkTarget.Hosting;

/// <summary>Adds <c>SyslogPriority</c> (RFC 5424 severities as sd-daemon(3)'s "&lt;N&gt;" prefixes expect: debug 7,
/// info 6, warning 4, error 3, critical 2) so the journal files each line under the right level.</summary>
public sealed class SyslogPriorityEnricher : ILogEventEnricher
{
    public static int Priority(LogEventLevel level) => level switch
    {
        LogEventLevel.Verbose or LogEventLevel.Debug => 7,
        LogEventLevel.Information => 6,
        LogEventLevel.Warning => 4,
        LogEventLevel.Error => 3,
        _ => 2,
    };

    public void Enrich(LogEvent logEvent, ILogEventPropertyFactory propertyFactory) =>
        logEvent.AddPropertyIfAbsent(propertyFactory.CreateProperty("SyslogPriority", Priority(logEvent.Level)));
}
