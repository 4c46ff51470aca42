"""The replica's batcher (resnet_ray/batching.py), on an event loop with a stand-in model."""

import asyncio

import pytest

from resnet_ray.batching import Batcher


class SlowModel:
    """Answers each item with item * 10, after a delay; records the batches it saw."""

    def __init__(self, seconds=0.05, fail_on=None):
        self.seconds, self.fail_on, self.batches = seconds, fail_on, []

    async def __call__(self, items):
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail_on in items:
            raise ValueError("model failed")
        return [i * 10 for i in items]


def test_requests_that_arrive_while_the_model_is_busy_form_one_full_batch():
    async def main():
        model = SlowModel(0.3)
        batcher = Batcher(model, max_batch_size=8, wait_s=0.001)
        sent = [asyncio.ensure_future(batcher(0))]
        while not model.batches:  # the first request goes alone, cut by the 1 ms wait
            await asyncio.sleep(0.001)
        for i in range(1, 12):  # one every 2 ms while the first batch is in the model
            await asyncio.sleep(0.002)
            sent.append(asyncio.ensure_future(batcher(i)))
        return model, await asyncio.gather(*sent)

    model, answers = asyncio.run(main())
    assert answers == [i * 10 for i in range(12)]
    # Batches cut by the 1 ms wait alone would hold one request each.
    assert [len(b) for b in model.batches] == [1, 8, 3], model.batches


def test_a_lone_request_does_not_wait_for_company_when_none_is_coming():
    async def main():
        batcher = Batcher(SlowModel(0), max_batch_size=8, wait_s=60, coming=lambda: 0)
        return await asyncio.wait_for(batcher(4), timeout=10)

    assert asyncio.run(main()) == 40


def test_a_batch_that_fails_fails_only_its_own_requests():
    async def main():
        model = SlowModel(fail_on=1)
        batcher = Batcher(model, max_batch_size=2, wait_s=0.05)
        results = await asyncio.gather(*(batcher(i) for i in range(4)),
                                       return_exceptions=True)
        return model, results

    model, results = asyncio.run(main())
    assert [len(b) for b in model.batches] == [2, 2]
    assert [type(r) for r in results[:2]] == [ValueError, ValueError]
    assert results[2:] == [20, 30]


def test_a_cancelled_request_is_left_out_of_its_batch():
    async def main():
        model = SlowModel()
        batcher = Batcher(model, max_batch_size=8, wait_s=0.001)
        busy = asyncio.ensure_future(batcher(0))
        await asyncio.sleep(0.01)
        gone, kept = asyncio.ensure_future(batcher(1)), asyncio.ensure_future(batcher(2))
        await asyncio.sleep(0)
        gone.cancel()
        return model, await asyncio.gather(busy, kept)

    model, answers = asyncio.run(main())
    assert answers == [0, 20] and model.batches == [[0], [2]]


@pytest.mark.parametrize("size", [1, 3])
def test_max_batch_size_is_never_exceeded(size):
    async def main():
        model = SlowModel(0.01)
        batcher = Batcher(model, max_batch_size=size, wait_s=0.05)
        await asyncio.gather(*(batcher(i) for i in range(10)))
        return model

    assert max(len(b) for b in asyncio.run(main()).batches) == size
