"""A minimal Django project in one module: ``djangoapp:application``.

- ``/db``: a query through Django's database layer (sqlite in memory). Django refuses it
  with ``SynchronousOnlyOperation`` when the thread has a running asyncio loop.
- ``/form``: a POST form, read through ``request.POST``; CSRF is not in the middleware.
- ``/upload``: the size and SHA-256 of ``request.body``.
"""

import hashlib

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="forkhorn-tests",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    USE_TZ=True,
)

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connection  # noqa: E402
from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402


def db(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 6 * 7")
        (value,) = cursor.fetchone()
    return HttpResponse(str(value))


def form(request):
    return JsonResponse({"method": request.method, "name": request.POST.get("name")})


def upload(request):
    body = request.body
    return JsonResponse({"size": len(body), "sha256": hashlib.sha256(body).hexdigest()})


urlpatterns = [path("db", db), path("form", form), path("upload", upload)]

application = get_wsgi_application()
