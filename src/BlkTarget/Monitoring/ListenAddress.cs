using System.Net;
using BlkTarget.Configuration;

namespace BlkTarget.Monitoring;

/// <summary>Parses --metrics-listen: ADDRESS:PORT, e.g. 127.0.0.1:9101, [::1]:9101, 0.0.0.0:9101 (every IPv4
/// address) or localhost:9101 (127.0.0.1); port 0: any free port. No other host names: the address must not depend on
/// a resolver at start.</summary>
public static class ListenAddress
{
    /// <summary>The endpoint; <see cref="ConfigurationException"/> when <paramref name="text"/> is not ADDRESS:PORT.</summary>
    public static IPEndPoint Parse(string text)
    {
        if (text.StartsWith("localhost:", StringComparison.OrdinalIgnoreCase)) text = "127.0.0.1" + text["localhost".Length..];
        int colon = text.LastIndexOf(':');
        bool hasPort = colon > 0 && colon < text.Length - 1 && text[(colon + 1)..].All(char.IsAsciiDigit) && (text[0] != '[' || text[colon - 1] == ']');
        if (!hasPort || !IPEndPoint.TryParse(text, out var endpoint))
            throw new ConfigurationException($"--metrics-listen: '{text}' is not ADDRESS:PORT with a literal IP address, e.g. 127.0.0.1:9101");
        return endpoint;
    }
}
