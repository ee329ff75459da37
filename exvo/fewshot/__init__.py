"""The ExVo-FewShot track: two-shot speaker personalisation (protocol, learners, runs, report table)."""
