using System.Globalization;
using System.Text.Json;
using BlkTarget.Storage.Interop;

namespace BlkTarget.Vhost.Scsi.Reservations;

/// <summary>
/// The APTPL sidecar file of a disk: <c>PATH.pr</c> next to the disk file PATH, holding the persistent reservation
/// state as JSON (<c>{"format":"blktarget-pr-1","generation":N,"aptpl":true,"type":T,"registrations":[{"key":
/// "0x...","initiator":"naa.3...","port":1,"holder":true}]}</c>). Written atomically (temporary file, fsync, rename,
/// fsync of the directory) after every change while APTPL is or was set, on a helper thread, never a reactor.
/// Read at start: with APTPL set its registrations come back as nexuses of no connection (a reconnecting
/// initiator registers anew, e.g. REGISTER AND IGNORE EXISTING KEY, and may PREEMPT the old key); otherwise, or when
/// the file is missing, the logical unit starts with no registrations.
/// </summary>
public sealed class ReservationSidecar(string path)
{
    public const string Suffix = ".pr";
    private const string Format = "blktarget-pr-1";

    /// <summary>The sidecar of the disk file <paramref name="diskPath"/>.</summary>
    public static ReservationSidecar For(string diskPath) => new(diskPath + Suffix);

    public string Path { get; } = path;

    /// <summary>The JSON text of <paramref name="state"/>.</summary>
    public static byte[] Serialize(ReservationSnapshot state)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("format", Format);
            w.WriteNumber("generation", state.Generation);
            w.WriteBoolean("aptpl", state.Aptpl);
            w.WriteNumber("type", state.Type);
            w.WriteStartArray("registrations");
            foreach (var r in state.Registrations)
            {
                w.WriteStartObject();
                w.WriteString("key", $"0x{r.Key:x16}");
                w.WriteString("initiator", r.Nexus.Name);
                w.WriteNumber("port", r.Nexus.RelativeTargetPort);
                w.WriteBoolean("holder", ReferenceEquals(state.Holder, r.Nexus));
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return buffer.ToArray();
    }

    /// <summary>Parses a sidecar's text; throws <see cref="InvalidDataException"/> (one line) when it is not one.
    /// A state without APTPL comes back empty (it was not to persist).</summary>
    public static ReservationSnapshot Parse(ReadOnlySpan<byte> json)
    {
        try
        {
            using var doc = JsonDocument.Parse(json.ToArray());
            var root = doc.RootElement;
            if (root.GetProperty("format").GetString() != Format) throw new InvalidDataException("not a blktarget-pr-1 file");
            if (!root.GetProperty("aptpl").GetBoolean()) return ReservationSnapshot.Empty;
            uint generation = root.GetProperty("generation").GetUInt32();
            byte type = root.GetProperty("type").GetByte();
            if (type != ReservationType.None && !ReservationType.IsValid(type)) throw new InvalidDataException($"reservation type {type}");
            var registrations = new List<Registration>();
            ScsiNexus? holder = null;
            foreach (var e in root.GetProperty("registrations").EnumerateArray())
            {
                string key = e.GetProperty("key").GetString() ?? "";
                string initiator = e.GetProperty("initiator").GetString() ?? "";
                if (!key.StartsWith("0x", StringComparison.Ordinal) || !initiator.StartsWith("naa.", StringComparison.Ordinal))
                    throw new InvalidDataException($"registration {key} of {initiator}");
                var nexus = new ScsiNexus(ulong.Parse(initiator.AsSpan(4), NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                    e.GetProperty("port").GetUInt16(), null);
                ulong value = ulong.Parse(key.AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                if (value == 0) throw new InvalidDataException("a registration with key 0");
                registrations.Add(new Registration(value, nexus));
                if (e.GetProperty("holder").GetBoolean()) holder = nexus;
            }
            if (registrations.Count > ReserveOutRules.MaxRegistrations) throw new InvalidDataException($"{registrations.Count} registrations");
            if (type != ReservationType.None && !ReservationType.IsAllRegistrants(type) && holder is null)
                throw new InvalidDataException("a reservation without a holder");
            if (type != ReservationType.None && registrations.Count == 0) throw new InvalidDataException("a reservation without registrations");
            return new ReservationSnapshot(generation, [.. registrations], type, holder, aptpl: true);
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException or OverflowException)
        {
            throw new InvalidDataException(e.Message, e);
        }
    }

    /// <summary>The saved state, or <see cref="ReservationSnapshot.Empty"/> when there is no file. Throws
    /// <see cref="InvalidDataException"/> for a damaged file and <see cref="IOException"/> when it cannot be read.</summary>
    public ReservationSnapshot Load()
    {
        if (!File.Exists(Path)) return ReservationSnapshot.Empty;
        try
        {
            return Parse(File.ReadAllBytes(Path));
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"{Path}: {e.Message}", e);
        }
    }

    /// <summary>Replaces the file with <paramref name="state"/> atomically and durably: temporary file, fsync, rename
    /// over the old one, fsync of the directory. Blocks: call from a helper thread.</summary>
    public void Save(ReservationSnapshot state) => DurableFile.Replace(Path, Serialize(state));
}
