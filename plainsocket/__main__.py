"""``python -m plainsocket run app:socketio``: the same as the ``plainsocket`` command."""

from plainsocket.cli import main

main()
