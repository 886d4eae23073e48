"""Public test doubles, for the engine's tests, its benchmarks and anyone testing against the engine
(as aiohttp ships `aiohttp.test_utils`): loopback fake servers of the model APIs the adapters speak.

- `engine.testing.fakeserver`: the fast, deterministic, fault-injecting OpenAI-compatible server
  (in the test's loop, in a thread, or as `python -m engine.testing.fakeserver`);
- `engine.testing.fake_providers`: schema-checking fakes of the Anthropic, Gemini and OpenAI
  reasoning-model APIs;
- `engine.testing.cdp`: a DevTools-protocol driver of the system chromium over a pipe, for the
  report's browser tests and benchmarks (console messages and network requests recorded).

The virtual clock that drives limits and retries on simulated time is `engine.core.clock.VirtualClock`.
Nothing in the engine imports this package at run time.
"""
