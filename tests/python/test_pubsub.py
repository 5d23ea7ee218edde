"""Cluster-wide PUBLISH: a message published on any node reaches the subscribers of every node,
as on a native cluster (README, "Pub/sub").

Covers: delivery across nodes; the publisher's count stays the local one (native); a refused
PUBLISH (ACL channel rules) and a discarded transaction forward nothing; PUBLISH inside an
executed transaction and from a script is forwarded; the INFO counters; an unconfigured node keeps
the server's own PUBLISH.
"""

import time

import pytest
import redis

from conftest import RawConnection, create_cluster, info_fields, raw, wait_until


def subscriber(node, *channels):
    c = node.client()
    p = c.pubsub(ignore_subscribe_messages=True)
    p.subscribe(*channels)
    # The subscription is in place once the server counts it.
    wait_until(lambda: c.pubsub_numsub(*channels)[0][1] == 1, timeout=5, what="subscription")
    p.keep_client_alive = c  # closing the client would close the subscriber's connection too
    return p


def next_message(p, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = p.get_message(timeout=0.2)
        if m and m["type"] == "message":
            return m
    return None


@pytest.fixture
def cluster(servers):
    return create_cluster(servers)


def test_publish_on_one_node_reaches_subscribers_of_every_node(cluster):
    a, b, c = cluster.nodes
    subs = [subscriber(n, "news") for n in (a, b, c)]
    with b.client() as pub:
        assert pub.publish("news", "hello") == 1  # the local subscriber, as natively
    for s in subs:
        m = next_message(s)
        assert m is not None and m["data"] == "hello"
        assert next_message(s, timeout=0.3) is None  # exactly once
    assert int(info_fields(b, "umcluster")["umcluster_publish_forwarded"]) == 2


def test_transactions_and_scripts_forward_only_what_ran(cluster):
    a, b, _ = cluster.nodes
    sub = subscriber(a, "tx")
    with b.client() as c:
        conn = c.connection_pool.get_connection("MULTI")
        conn.send_command("MULTI")
        assert conn.read_response() in (b"OK", "OK")
        conn.send_command("PUBLISH", "tx", "never")
        assert conn.read_response() in (b"QUEUED", "QUEUED")
        conn.send_command("DISCARD")
        assert conn.read_response() in (b"OK", "OK")
        c.connection_pool.release(conn)
        tx = c.pipeline(transaction=True)
        tx.publish("tx", "in-exec")
        assert tx.execute() == [0]
        assert c.eval("return redis.call('PUBLISH', 'tx', 'from-lua')", 0) == 0
    got = [next_message(sub), next_message(sub)]
    assert [m["data"] for m in got if m] == ["in-exec", "from-lua"]
    assert next_message(sub, timeout=0.3) is None


def test_acl_channel_rules_apply_and_a_refused_publish_is_not_forwarded(cluster):
    a, b, _ = cluster.nodes
    sub = subscriber(a, "secret", "open")
    with b.client() as admin:
        admin.execute_command(
            "ACL", "SETUSER", "pub", "on", ">pw", "resetchannels", "&open", "+publish",
            "+umcluster.publish",
        )
    with b.client(username="pub", password="pw") as c:
        with pytest.raises(redis.exceptions.NoPermissionError):
            c.publish("secret", "leak")
        assert c.publish("open", "fine") == 0
    m = next_message(sub)
    assert m is not None and (m["channel"], m["data"]) == ("open", "fine")
    assert next_message(sub, timeout=0.3) is None


def test_unconfigured_node_keeps_the_servers_publish(servers):
    node = servers.start()
    sub = subscriber(node, "local")
    with node.client() as c:
        assert c.publish("local", "x") == 1
    assert next_message(sub)["data"] == "x"
    assert info_fields(node, "umcluster")["umcluster_publish_forwarded"] == "0"
    assert raw(node, "UMCTL", "GETEPOCH") == 0


def test_forwarding_authenticates_with_masterauth(servers):
    """Nodes that require a password: PUBLISH forwarding logs in with masteruser/masterauth (the
    credentials a replica uses towards its master), read when a topology is pushed."""
    a, b = servers.start_many(2)
    for n in (a, b):
        c = n.client()
        c.config_set("masterauth", "pw")
        c.config_set("requirepass", "pw")
    for me, mine, peer, theirs in ((a, "0-8191", b, "8192-16383"), (b, "8192-16383", a, "0-8191")):
        with RawConnection(me.port) as r:
            assert r.call("AUTH", "pw") == "OK"
            assert r.call("UMCTL", "SETCLUSTER", "v2", "1", "NOFLAG", "pw", me.addr, "1", mine,
                          "PEER", peer.addr, "1", theirs) == "OK"
    sub_client = b.client(password="pw")
    p = sub_client.pubsub(ignore_subscribe_messages=True)
    p.subscribe("secure")
    wait_until(lambda: sub_client.pubsub_numsub("secure")[0][1] == 1, timeout=5, what="subscription")
    with a.client(password="pw") as pub:
        pub.publish("secure", "hello")
    m = next_message(p)
    assert m is not None and m["data"] == "hello", "the forwarded PUBLISH was refused (no AUTH?)"
    p.close()
    sub_client.close()
