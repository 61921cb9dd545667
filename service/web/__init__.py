"""The browser side of zoserve: the job dashboard and the human-in-the-loop ranking form.

* ``routes.py`` — the router ``create_app`` includes;
* ``api.py`` — public ``/v1`` routes the pages use (candidate PNGs, answers, rater links);
* ``pages.py`` — server-rendered Jinja2 pages under ``/ui`` and their static JS/CSS;
* ``render.py``, ``scene.py`` — Pillow renderers that draw a candidate point as a PNG.

The pages talk only to the public API (fetch, and SSE read over fetch), like the SDK.
"""
