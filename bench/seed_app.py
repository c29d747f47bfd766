"""BASELINE ONLY — the seed project's synchronous design, kept to measure the pipeline against.

Not part of the product: the Flask development server, `model.predict` on each request, a resize-only
preprocessing and one MySQL INSERT per request, answering with the digit. `python -m bench.seed_app
--port P --model M --database-url URL`.
"""

from __future__ import annotations

import argparse
import io
import logging
import threading
from pathlib import Path

import numpy as np
from flask import Flask, jsonify, request
from PIL import Image
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, create_engine, func, insert

from shared.deskew import deskew
from worker.model import ModelCard

metadata = MetaData()
seed_predictions = Table(
    "seed_predictions", metadata,
    Column("id", Integer, primary_key=True),
    Column("filename", String(255)),
    Column("digit", Integer),
    Column("created_at", DateTime, server_default=func.now()),
)


def create_seed_app(model_path: str, database_url: str) -> Flask:
    """The seed's app: load the model, predict inline, insert a row."""
    import keras

    model = keras.models.load_model(model_path, compile=False)
    # Today's models are trained on deskewed digits and must be given them (their card says so); the seed had no
    # such step, but its design is what is measured, not a model fed the wrong input (0.1 ms against predict's 46).
    deskewed = ModelCard.of(Path(model_path)).deskew
    # The development server runs requests in threads, and Keras' model.predict is not safe to call from several
    # at once (it once aborted TensorFlow here: "Mutex corrupt"): one model call at a time keeps the baseline alive.
    predicting = threading.Lock()
    engine = create_engine(database_url)
    metadata.create_all(engine)
    app = Flask(__name__)

    @app.post("/predict")
    def predict():  # noqa: ANN202 - kept as plain as the seed
        upload = request.files["file"]
        image = Image.open(io.BytesIO(upload.read())).convert("L").resize((28, 28))
        x = (np.asarray(image, dtype=np.float32) / 255.0).reshape(1, 28, 28)
        x = (deskew(x) if deskewed else x)[..., np.newaxis]
        with predicting:
            digit = int(np.argmax(model.predict(x, verbose=0)))
        with engine.begin() as conn:
            conn.execute(insert(seed_predictions).values(filename=upload.filename, digit=digit))
        return jsonify({"digit": digit})

    return app


def main() -> None:
    """Serve the baseline with the development server, as the seed did."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--database-url", required=True)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    create_seed_app(args.model, args.database_url).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
