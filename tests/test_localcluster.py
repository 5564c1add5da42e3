"""The private cluster fixture really is a 3-master Redis Cluster spreading slots."""

from __future__ import annotations

import redis

from binormal.common.localcluster import SLOTS, LocalCluster, command, info_fields


def test_cluster_has_three_masters_covering_every_slot(redis_cluster: LocalCluster, cluster_url: str) -> None:
    masters = [p for p in redis_cluster.live_ports() if redis_cluster.role(p) == "master"]
    assert len(masters) == 3
    info = info_fields(command(masters[0], "CLUSTER", "INFO"))
    assert info["cluster_state"] == "ok"
    assert info["cluster_slots_assigned"] == str(SLOTS)
    assert info["cluster_size"] == "3"
    client = redis.RedisCluster.from_url(cluster_url, protocol=2)
    try:
        # Keys with different hash tags land on different masters.
        nodes = {client.get_node_from_key(f"bn:{{bn.{s}}}:events").port for s in range(16)}
        assert nodes == set(masters)
    finally:
        client.close()
