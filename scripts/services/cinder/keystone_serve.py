"""Serve Keystone's public WSGI application on $KEYSTONE_LISTEN (host:port) with a small
threading WSGI server.

For Elara's tests only: one process, no TLS. The configuration comes from the environment
(OS_KEYSTONE_CONFIG_FILES), as Keystone's own WSGI entry point reads it; Keystone parses the
command line too, so nothing is passed there.
"""
import os
import socketserver
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

host, port = os.environ["KEYSTONE_LISTEN"].rsplit(":", 1)
sys.argv = sys.argv[:1]
from keystone.wsgi.api import application  # noqa: E402  (reads its configuration on import)


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Handler(WSGIRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("keystone: %s\n" % (fmt % args))


make_server(host, int(port), application, server_class=ThreadingWSGIServer, handler_class=Handler).serve_forever()
