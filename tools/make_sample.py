"""Write examples/sample: a small real TF1 checkpoint (2-layer MLP trained one step with Adam).

python tools/make_sample.py      (needs TensorFlow; the result is committed)
"""

import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "sample")


def main() -> int:
    tf1 = tf.compat.v1
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    with tf.Graph().as_default():
        tf1.set_random_seed(0)
        x = tf1.placeholder(tf.float32, [None, 16])
        y = tf1.placeholder(tf.float32, [None, 4])

        def dense(inputs, units, name):
            with tf1.variable_scope(name):
                kernel = tf1.get_variable("kernel", [inputs.shape[-1], units])
                bias = tf1.get_variable("bias", [units], initializer=tf1.zeros_initializer())
            return tf.matmul(inputs, kernel) + bias

        with tf1.variable_scope("mlp"):
            h = tf.nn.relu(dense(x, 32, "hidden"))
            logits = dense(h, 4, "logits")
        loss = tf1.losses.softmax_cross_entropy(y, logits)
        step = tf1.train.get_or_create_global_step()
        train = tf1.train.AdamOptimizer(1e-3).minimize(loss, global_step=step)
        saver = tf1.train.Saver()
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            rng = np.random.default_rng(0)
            sess.run(train, {x: rng.standard_normal((8, 16)), y: np.eye(4)[rng.integers(0, 4, 8)]})
            saver.save(sess, os.path.join(OUT, "model.ckpt"), global_step=step, write_meta_graph=False)
    # TF writes an absolute path into the state file; keep the sample relocatable.
    with open(os.path.join(OUT, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "model.ckpt-1"\nall_model_checkpoint_paths: "model.ckpt-1"\n')
    print("wrote", OUT, sorted(os.listdir(OUT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
