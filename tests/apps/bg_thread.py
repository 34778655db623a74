"""Flask-SocketIO's example background thread, ported by changing the imports only."""

from threading import Lock

from plainsocket import SocketServer, emit

socketio = SocketServer()
thread = None
thread_lock = Lock()


def background_thread():
    """Example of how to send server generated events to clients."""
    count = 0
    while True:
        socketio.sleep(0.2)  # 10 s in the original
        count += 1
        socketio.emit("my_response", {"data": "Server generated event", "count": count}, namespace="/test")


@socketio.on("connect", namespace="/test")
def test_connect():
    global thread
    with thread_lock:
        if thread is None:
            thread = socketio.start_background_task(background_thread)
    emit("my_response", {"data": "Connected", "count": 0})
