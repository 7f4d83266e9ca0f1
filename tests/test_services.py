"""The integration-test helpers themselves: a Ray cluster of separate nodes, and no process left behind."""
import pytest

from services import alive, kill_node, live_nodes, pids_mentioning, start_ray_cluster

pytestmark = pytest.mark.integration


def test_ray_cluster_of_separate_nodes_and_cleanup():
    cluster = start_ray_cluster(workers=[{"zone_a": 1}, {"zone_b": 1}])
    try:
        assert live_nodes(cluster.address) == 3
        lost = cluster.workers[1]
        pids = lost.processes()
        assert len(pids) >= 3  # ray start, raylet, agents: all of them are ours to end
        kill_node(lost)
        assert not any(alive(p) for p in pids)
        assert not pids_mentioning(str(lost.temp_dir))
    finally:
        cluster.stop()
    everything = cluster.head.pids | cluster.workers[0].pids
    assert everything and not any(alive(p) for p in everything)
    assert not pids_mentioning(str(cluster.head.temp_dir))
