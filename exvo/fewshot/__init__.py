"""The ExVo-FewShot track: two-shot speaker personalisation (protocol, learners, runs, report table)."""

from exvo.callable_module import make_callable

make_callable(__name__)   # exvo.fewshot(...) is the API function (exvo.api.fewshot)
