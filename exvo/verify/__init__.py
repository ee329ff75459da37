
from exvo.callable_module import make_callable

make_callable(__name__)   # exvo.verify(...) is the API function (exvo.api.verify)
