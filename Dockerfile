# The same environment as `make demo`, in a container: Debian packages, then `pip install .`.
FROM python:3.11-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ffmpeg espeak-ng libegl1 libgl1-mesa-dri libegl-mesa0 wget \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir '.[postgres,cluster]'

ENV NUMBA_CACHE_DIR=/app/.cache/numba MPLCONFIGDIR=/app/.cache/matplotlib \
    TORCH_HOME=/app/.cache/torch GRADIO_TEMP_DIR=/app/.cache/gradio

EXPOSE 7860 7870 8765
# A rating study instead: docker run -p 7870:7870 -v $PWD/study:/study IMAGE \
#   python -m human_study serve --study /study/study.yaml --host 0.0.0.0
# Live synthesis alone (WebSocket, WebRTC and the /live page): docker run -p 8765:8765 -v $PWD/m:/m IMAGE \
#   lipsync serve --model /m/model --target /m/speaker.mp4 --host 0.0.0.0
# (WebRTC media goes over UDP ports chosen per connection: run with --network host for it)
# A Ray worker or head (docs/cluster.md): the same image, started by KubeRay or with
#   ray start --head --port 6379 --block   /   ray start --address HEAD:6379 --block
# The main job (as `make demo`): the Gradio demo, listening on every interface of the container.
CMD ["python", "-m", "demo", "--host", "0.0.0.0", "--port", "7860"]
