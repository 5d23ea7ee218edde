"""Replica fidelity under concurrent write load (replication.md "Replicas").

While a thread keeps writing to the master (SETs, counters, hashes, EXPIRE, DEL, MULTI/EXEC
blocks, scripts: `test_replica.write_batch`), the main thread keeps pushing new SETCLUSTER and
SETREPL configurations to the replica, some of which give the replica slots of its own or none
at all. Once the writer stops and the replica has caught up, its dataset equals the master's
(`DEBUG DIGEST`), and the replica never redirected anything (its MOVED/ASK counters stay 0):
the master link is obeyed whatever the replica's table says.
"""

import threading

from conftest import info_fields, raw
from test_replica import assert_identical, attach, repl_offset, setrepl, start_pair, write_batch


def test_replica_stays_identical_while_topologies_change_under_load(servers):
    master, replica = start_pair(servers, "serves-nothing")
    attach(master, replica)
    other = "127.0.0.1:1"  # a peer that does not exist
    layouts = [
        ["0", "PEER", master.addr, "2", "0-8191", "8192-16383"],
        # The replica believes it owns half the slots: still nothing from the master is refused.
        ["1", "0-8191", "PEER", master.addr, "1", "8192-16383"],
        ["0", "PEER", master.addr, "1", "0-9999", other, "1", "10000-16383"],
        ["1", "0-16383"],
        ["0", "PEER", other, "1", "0-16383"],
        ["0", "PEER", master.addr, "1", "0-16383"],
    ]
    stop = threading.Event()
    errors = []
    batches = [0]

    def writer():
        try:
            while not stop.is_set():
                write_batch(master, f"load{batches[0]}", n_sets=500)
                batches[0] += 1
        except Exception as e:  # reported by the main thread
            errors.append(e)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    epoch = 1
    try:
        for _ in range(3):
            for layout in layouts:
                # Each push lands between writes: wait until the master has replicated more.
                before = repl_offset(master)
                while repl_offset(master) == before and not errors and t.is_alive():
                    t.join(timeout=0.01)
                epoch += 1
                reply = raw(replica, "UMCTL", "SETCLUSTER", "v2", str(epoch), "NOFLAG", "db",
                            replica.addr, *layout)
                assert reply == "OK", reply
            setrepl(master, replica, epoch=epoch)
        # Let at least one whole batch run after the last push.
        seen = batches[0]
        while batches[0] < seen + 2 and not errors and t.is_alive():
            t.join(timeout=0.05)
    finally:
        stop.set()
        t.join(timeout=60)
    assert not errors, errors
    assert batches[0] >= 2
    assert_identical(master, replica)
    fields = info_fields(replica, "umcluster")
    assert fields["umcluster_redirect_moved"] == "0"
    assert fields["umcluster_redirect_ask"] == "0"
    assert fields["umcluster_setcluster_accepted"] == str(1 + 3 * len(layouts))
