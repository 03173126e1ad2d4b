# The same environment as `make demo`, in a container: Debian packages, then `pip install .`.
FROM python:3.11-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ffmpeg espeak-ng libegl1 libgl1-mesa-dri libegl-mesa0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir .

ENV NUMBA_CACHE_DIR=/app/.cache/numba MPLCONFIGDIR=/app/.cache/matplotlib \
    TORCH_HOME=/app/.cache/torch GRADIO_TEMP_DIR=/app/.cache/gradio

# The main job (as `make demo`): prepare the bundled GRID example into /app/examples.
CMD ["lipsync", "preprocess", "tests/fixtures/grid_s1_bgaa8p.mpg", "--out", "examples/grid_s1_prepared", "--overwrite", "--progress"]
