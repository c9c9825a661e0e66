"""CommitTrail: where a read restarts when the broker lost records below the committed offset."""

from __future__ import annotations

import pytest

from transforms.kafka.commit_trail import GONE, CommitTrail

KEY = ("fake:9092", "g", "events", 0)


def _log(length: int, *, lost_from: int | None = None, generation: int = 1):
    """A lookup over a log of ``length`` records; from ``lost_from`` on they are new records
    (the broker lost the originals and gave their offsets away)."""

    def lookup(offset: int):
        if offset >= length:
            return None
        if lost_from is not None and offset >= lost_from:
            return (offset * 10, hash(("new", generation, offset)))
        return (offset * 10, hash(("original", offset)))

    return lookup


def _trail(commits: list[int], origin: int = 0, **kwargs) -> CommitTrail:
    """Commits of records of the intact log, one a second from t=100."""
    trail = CommitTrail(**kwargs)
    trail.started(KEY, origin)
    for second, committed in enumerate(commits):
        record = committed - 1
        trail.committed(
            KEY, committed, (record, record * 10, hash(("original", record))), at=100.0 + second
        )
    return trail


def test_an_intact_log_keeps_the_committed_offset():
    trail = _trail([8, 16, 20])
    assert trail.verified_start(KEY, 20, _log(30)) == 20
    assert trail.verified_start(KEY, 16, _log(30)) == 16  # an older commit the broker kept


def test_a_lost_suffix_rewinds_to_the_last_commit_whose_record_is_held():
    trail = _trail([8, 16, 20, 24])
    # The broker kept offsets 0..17 and new records took 18 on: 19 and 23 are different now.
    assert trail.verified_start(KEY, 24, _log(40, lost_from=18)) == 16
    # ... or it has not been written to since: the log ends at 18.
    assert trail.verified_start(KEY, 24, _log(18)) == 16


def test_a_loss_below_every_commit_goes_back_to_where_the_process_started():
    trail = _trail([8, 16], origin=3)
    assert trail.verified_start(KEY, 16, _log(30, lost_from=5)) == 3


def test_an_offset_between_a_held_and_a_lost_point_is_read_again_from_the_held_one():
    """The broker's committed offset (18) lies between the last held commit (16) and the first
    lost one (20): records 16..17 may be lost too, so they are read again (duplicates)."""
    trail = _trail([8, 16, 20])
    assert trail.verified_start(KEY, 18, _log(40, lost_from=17)) == 16


def test_records_removed_by_retention_count_as_held():
    trail = _trail([8, 16])
    lookup = _log(30)
    assert (
        trail.verified_start(KEY, 16, lambda offset: GONE if offset < 10 else lookup(offset)) == 16
    )


def test_no_trail_and_unknown_partitions_are_not_checked():
    trail = CommitTrail()

    def refuse(offset):
        raise AssertionError("looked up")

    assert trail.verified_start(KEY, 42, refuse) == 42
    assert not trail.knows(KEY)


def test_lookups_are_a_binary_search():
    trail = _trail(list(range(10, 5000, 10)), recent=1000)
    seen = []
    lookup = _log(10_000, lost_from=2345)

    def counting(offset):
        seen.append(offset)
        return lookup(offset)

    assert trail.verified_start(KEY, 4990, counting) == 2340
    assert len(seen) <= 10


def test_a_rewind_drops_the_points_past_it_and_later_commits_continue_from_there():
    trail = _trail([8, 16, 20, 24])
    trail.rewound(KEY, 16)
    trail.committed(KEY, 18, (17, 170, hash(("original", 17))))
    assert trail.verified_start(KEY, 18, _log(40)) == 18
    assert trail.verified_start(KEY, 18, _log(40, lost_from=17)) == 16


@pytest.mark.parametrize("commits", [3000, 10_000, 100_000])
def test_the_trail_stays_bounded_and_reaches_back_to_old_commits(commits):
    trail = _trail(list(range(1, commits + 1)), recent=64)
    points = trail._points[KEY]
    assert len(points) <= 2 * 64 + 32 * (commits // 32).bit_length()  # logarithmic
    assert [p.committed for p in points] == sorted(p.committed for p in points)
    for lost_from in (commits - 300, commits - commits // 3, commits // 10, 40):
        # a loss at any age: the read starts a little before it, never back at the origin
        start = trail.verified_start(KEY, commits, _log(commits + 5, lost_from=lost_from))
        assert lost_from - (commits - lost_from) // 10 - 2 <= start <= lost_from


def test_the_trail_never_leaves_a_minute_of_commits_without_a_point():
    """20 commits a second for an hour; the broker then lost the last minute: the old halving
    kept no point between the first commit and the last ~4 x 256 (a restart from offset 0)."""
    commits = 20 * 3600
    trail = _trail(list(range(1, commits + 1)))
    start = trail.verified_start(KEY, commits, _log(commits, lost_from=commits - 20 * 60))
    assert commits - 20 * 60 - 20 * 10 <= start <= commits - 20 * 60


def test_after_an_outage_the_restart_goes_back_to_a_commit_made_replay_s_before_it():
    """The broker may have lost outputs it had acknowledged while keeping the inputs and the
    group's offset: every record whose output was written shortly before the outage is read
    again, once."""
    trail = _trail([8, 16, 20, 24])  # committed at t=100, 101, 102, 103
    trail.outage("fake:9092", "g", began_at=104.5)
    assert trail.verified_start(KEY, 24, _log(40), replay_s=3.0) == 16  # the commit at t=101
    assert trail.verified_start(KEY, 24, _log(40), replay_s=3.0) == 24  # acted on already


def test_an_outage_before_every_commit_goes_back_to_the_origin_and_replay_0_not_at_all():
    trail = _trail([8, 16], origin=3)
    trail.outage("fake:9092", "g", began_at=101.5)
    assert trail.verified_start(KEY, 16, _log(40), replay_s=0.0) == 16
    trail.outage("fake:9092", "g", began_at=101.5)
    assert trail.verified_start(KEY, 16, _log(40), replay_s=60.0) == 3


def test_an_outage_of_another_group_or_cluster_changes_nothing():
    trail = _trail([8, 16])
    trail.outage("fake:9092", "other-group", began_at=200.0)
    trail.outage("elsewhere:9092", "g", began_at=200.0)
    assert trail.verified_start(KEY, 16, _log(40), replay_s=60.0) == 16


def test_the_replay_never_moves_a_start_up_past_lost_records():
    trail = _trail([8, 16, 20, 24])
    trail.outage("fake:9092", "g", began_at=104.0)
    assert trail.verified_start(KEY, 24, _log(40, lost_from=10), replay_s=1.0) == 8
