import json

from django.http import HttpRequest, HttpResponseNotAllowed, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from newsroom.realtime import realtime

from .models import Note


@csrf_exempt  # a JSON API for the example; a real one would authenticate the caller
def notes(request: HttpRequest) -> JsonResponse | HttpResponseNotAllowed:
    """POST {"text": …} saves a note (the post_save signal publishes it); GET lists them.

    A plain view: under ASGI Django runs it in a worker thread, and so the signal's
    broadcast is handed to the event loop."""
    if request.method == "POST":
        note = Note.objects.create(text=str(json.loads(request.body)["text"]))
        return JsonResponse({"id": note.pk}, status=201)
    if request.method == "GET":
        return JsonResponse({"notes": list(Note.objects.values_list("text", flat=True))})
    return HttpResponseNotAllowed(["GET", "POST"])


@csrf_exempt
async def announce(request: HttpRequest) -> JsonResponse | HttpResponseNotAllowed:
    """POST {"text": …} publishes straight from an async view (on the event loop)."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    text = str(json.loads(request.body)["text"])
    return JsonResponse({"id": realtime.broadcast("notes", "announcement", {"text": text})})
