"""gRPC servicers: decode the request, call one service method, encode the reply. No rules here."""
