"""Foedus control plane: the gRPC server, its services and its store."""
