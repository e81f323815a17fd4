using System.Net;
using BlkTarget.Configuration;

namespace BlkTarget.Monitoring;

/// <summary>Parses --metrics-listen: ADDRESS:PORT, e.g. 127.0.0.1:9101 or [::1]:9101 (port 0: any free port).</summary>
public static class ListenAddress
{
    /// <summary>The endpoint; <see cref="ConfigurationException"/> when <paramref name="text"/> is not ADDRESS:PORT.</summary>
    public static IPEndPoint Parse(string text)
    {
        int colon = text.LastIndexOf(':');
        bool hasPort = colon > 0 && colon < text.Length - 1 && text[(colon + 1)..].All(char.IsAsciiDigit) && (text[0] != '[' || text[colon - 1] == ']');
        if (!hasPort || !IPEndPoint.TryParse(text, out var endpoint))
            throw new ConfigurationException($"--metrics-listen: '{text}' is not ADDRESS:PORT, e.g. 127.0.0.1:9101");
        return endpoint;
    }
}
