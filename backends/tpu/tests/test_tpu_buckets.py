from octavo_tpu.buckets import bucket_for, bucket_sizes


def test_powers_of_two_from_the_floor_capped_by_the_limit():
    assert bucket_sizes(16, 2048) == [16, 32, 64, 128, 256, 512, 1024, 2048]
    assert bucket_sizes(16, 100) == [16, 32, 64, 100]
    assert bucket_sizes(8, 8) == [8]
    assert bucket_sizes(16, 5) == [5]


def test_the_smallest_bucket_that_holds_the_step():
    sizes = bucket_sizes(16, 100)
    assert [bucket_for(sizes, n) for n in (1, 16, 17, 65, 100)] == [16, 16, 32, 100, 100]
