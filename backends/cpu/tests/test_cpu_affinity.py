"""Which cores each worker process of a parallel engine gets (--cpu-omp-threads-bind)."""
import pytest

from octavo.backend import ConfigError, ParallelRank
from octavo_cpu.affinity import check_bind, parse_core_list, rank_cores


def rank(local_rank: int, local_world_size: int) -> ParallelRank:
    return ParallelRank(rank=local_rank % 2, world_size=2, local_rank=local_rank,
                        local_world_size=local_world_size, init_method="tcp://127.0.0.1:1")


def test_auto_shares_the_cores_out():
    cores = list(range(8))
    assert [rank_cores("auto", rank(i, 4), cores) for i in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert rank_cores("auto", rank(1, 2), [0, 2, 4]) == [2]  # the remainder stays unused
    assert rank_cores("auto", None, cores) is None  # a lone in-process worker keeps them all
    assert rank_cores("all", rank(0, 2), cores) is None
    with pytest.raises(ConfigError, match="4 worker processes on this machine but only 2 cores"):
        rank_cores("auto", rank(0, 4), [0, 1])


def test_explicit_core_lists():
    assert parse_core_list("0-3,6") == [0, 1, 2, 3, 6]
    assert rank_cores("0-1|4,5", rank(1, 2), list(range(8))) == [4, 5]
    with pytest.raises(ConfigError, match="gives 2 core lists for 3 worker processes"):
        rank_cores("0|1", rank(0, 3), list(range(8)))
    check_bind("0-3|4-7")
    with pytest.raises(ConfigError, match="must be auto, all or core lists"):
        check_bind("every")
