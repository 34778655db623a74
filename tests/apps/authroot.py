"""An app whose / connect handler needs a token: it logs every refusal."""

import logging
from typing import Any

from plainsocket import SocketServer

socketio = SocketServer()
logger = logging.getLogger("authroot")


@socketio.on("connect")
def connect(auth: Any) -> bool:
    if auth == {"token": "s3cret"}:
        logger.warning("admitted with %r", auth)
        return True
    logger.warning("refused auth %r", auth)
    return False
