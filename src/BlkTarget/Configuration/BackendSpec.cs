namespace BlkTarget.Configuration;

/// <summary>A parsed --backend value. Only "ram:SIZE" exists so far; file: and image: follow.</summary>
public sealed record BackendSpec(string Kind, ulong SizeBytes)
{
    public static bool TryParse(string text, out BackendSpec? spec, out string? error)
    {
        spec = null;
        error = null;
        int colon = text.IndexOf(':');
        string kind = colon < 0 ? text : text[..colon];
        string argument = colon < 0 ? "" : text[(colon + 1)..];
        switch (kind)
        {
            case "ram":
                if (!SizeParser.TryParse(argument, out ulong size) || size == 0)
                {
                    error = $"backend '{text}': expected ram:SIZE, e.g. ram:1G";
                    return false;
                }
                spec = new BackendSpec("ram", size);
                return true;
            default:
                error = $"backend '{text}': unknown kind '{kind}' (supported: ram:SIZE)";
                return false;
        }
    }

    public override string ToString() => $"{Kind}:{SizeParser.Format(SizeBytes)}";
}
