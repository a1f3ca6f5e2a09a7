from django.apps import AppConfig


class NotesConfig(AppConfig):
    name = "notes"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (connects the post_save handler)
