using System.Buffers.Binary;

namespace BlkTarget.Vhost.Scsi;

/// <summary>
/// PERSISTENT RESERVE IN/OUT for a target that keeps no registrations or reservations (SPC-4 6.15, 6.16): IN
/// reports none; OUT accepts what is a no-op when nothing is registered (unregistering with key 0) and answers
/// RESERVATION CONFLICT to what an unregistered I_T nexus may not do. Registering a key is not supported.
/// </summary>
public static class PersistentReservations
{
    public const int ParameterListLength = 24;

    public static void In(ref ScsiTask task)
    {
        var cdb = task.Cdb;
        int action = cdb[1] & 0x1f;
        var d = task.Scratch[..8];
        d.Clear();
        switch (action)
        {
            case 0:    // READ KEYS: generation 0, no keys
            case 1:    // READ RESERVATION: generation 0, no reservation
            case 3:    // READ FULL STATUS: generation 0, no descriptors
                break;
            case 2:    // REPORT CAPABILITIES: TMV set, no reservation type supported
                BinaryPrimitives.WriteUInt16BigEndian(d, 8);
                d[3] = 0x80;
                break;
            default:
                task.Fail(SenseCode.InvalidFieldInCdb);
                return;
        }
        task.ReturnData(d, Cdb.U16(cdb, 7));
    }

    public static void Out(ref ScsiTask task)
    {
        var cdb = task.Cdb;
        int action = cdb[1] & 0x1f;
        if (action > 6)
        {
            task.Fail(SenseCode.InvalidFieldInCdb);           // REGISTER AND MOVE and reserved actions
            return;
        }
        uint length = Cdb.U32(cdb, 5);
        if (length != ParameterListLength)
        {
            task.Fail(SenseCode.ParameterListLengthError);
            return;
        }
        if (!task.TryReadParameters(length, out var p)) return;
        ulong key = BinaryPrimitives.ReadUInt64BigEndian(p);
        ulong serviceActionKey = BinaryPrimitives.ReadUInt64BigEndian(p[8..]);
        switch (action)
        {
            case 0:    // REGISTER: this nexus holds no key, so the reservation key must be 0
                if (key != 0)
                {
                    task.Status = ScsiStatus.ReservationConflict;
                    return;
                }
                goto case 6;
            case 6:    // REGISTER AND IGNORE EXISTING KEY
                if (serviceActionKey != 0) task.Fail(SenseCode.InvalidFieldInParameterList);
                else task.Good();                              // unregistering what is not registered: no-op
                return;
            default:   // RESERVE, RELEASE, CLEAR, PREEMPT(+ABORT) from an unregistered I_T nexus
                task.Status = ScsiStatus.ReservationConflict;
                return;
        }
    }
}
