# One image for both roles: the edge server and the device client (see docker-compose.yml).
# CPU-only; the shipped checkpoints travel in the build context, so nothing is downloaded at run time.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /splitedge
COPY . .
RUN rm -rf .venv && make install
ENV PATH=/splitedge/.venv/bin:$PATH PYTHONUNBUFFERED=1
EXPOSE 50051
CMD ["splitedge", "serve", "--host", "0.0.0.0", "--port", "50051"]
