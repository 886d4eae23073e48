"""`python -m engine bench`: load a model server the way `vllm bench serve` does and measure it.

    arrivals.py  when each request is due (Poisson or gamma open loop, or all at once)
    load.py      sends the streamed requests on that schedule (optionally at most C in flight) and
                 records each outcome and how late the client sent it
    metrics.py   pure: outcomes -> the result (vllm's field names), goodput, percentiles
    setup.py     what to send and to whom: a server root (--base-url) or a configured model, and the
                 prompts (synthetic, an items file)
    result.py    the table and the result JSON / sweep SVG
"""
