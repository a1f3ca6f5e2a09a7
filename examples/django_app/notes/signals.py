"""Every saved note is published to the `notes` channel, wherever it was saved: a view
(in Django's worker thread under ASGI), the admin, a management command, a task."""

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver
from newsroom.realtime import realtime

from .models import Note


@receiver(post_save, sender=Note)
def publish_note(sender: type[Note], instance: Note, created: bool, **kwargs: Any) -> None:
    if created:
        realtime.broadcast("notes", "note.created", {"id": instance.pk, "text": instance.text})
