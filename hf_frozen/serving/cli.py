"""`hf-frozen serve ...`: an OpenAI-compatible HTTP server for task encoders and DecT heads, on Ray Serve.

    hf-frozen serve --base_model_name_or_path google-t5/t5-base \
        --task summarize=./enc-sum --task translate=me/enc-tr --port 8000

Ray starts in this process on this machine, unless `--address` names a running Ray cluster to join.
"""

from __future__ import annotations

import argparse


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-frozen serve", allow_abbrev=False,
        description="Serve task encoders on one frozen decoder (POST /v1/completions) and DecT heads (POST "
                    "/v1/classifications) over an OpenAI-compatible HTTP API, on Ray Serve.",
    )  # fmt: skip
    tasks = parser.add_argument_group("Tasks")
    tasks.add_argument("--task", action="append", default=[], metavar="NAME=FOLDER_OR_REPO",
                       help="a task id and its artifact: a frozen-decoder task encoder or a DecT head, in a folder "
                            "or a Hub repo; repeat for each task")  # fmt: skip
    tasks.add_argument("--set", action="append", default=[], metavar="FOLDER_OR_REPO",
                       help="a multi-encoder set (MultiEncoderModel.save_pretrained): each of its tasks under its "
                            "own name; repeatable")  # fmt: skip
    tasks.add_argument("--base_model_name_or_path", help="the encoder-decoder base of the task encoders (default: "
                       "the one they record)")  # fmt: skip
    tasks.add_argument("--dect_backbone_name_or_path", help="the backbone of the DecT heads (default: the one they "
                       "record)")  # fmt: skip
    tasks.add_argument("--revision", help="Hub revision of the tasks given by repo id")
    http = parser.add_argument_group("HTTP")
    http.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 "
                      "for every interface)")  # fmt: skip
    http.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    http.add_argument("--max_request_bytes", type=int, default=1 << 20, help="default: %(default)s")
    http.add_argument("--max_prompts", type=int, default=64, help="prompts per request (default: %(default)s)")
    http.add_argument("--max_tokens", type=int, default=512, help="largest max_tokens (default: %(default)s)")
    http.add_argument("--max_num_beams", type=int, default=8, help="largest num_beams (default: %(default)s)")
    http.add_argument("--max_input_tokens", type=int, default=512, help="prompts are cut to this many tokens "
                      "(default: %(default)s)")  # fmt: skip
    ray_group = parser.add_argument_group("Ray")
    ray_group.add_argument("--address", help="a Ray cluster to join (e.g. auto, or ray://head:10001); default: "
                           "start Ray in this process")  # fmt: skip
    ray_group.add_argument("--num_replicas", type=int, default=1, help="replicas per kind of task "
                           "(default: %(default)s)")  # fmt: skip
    ray_group.add_argument("--max_tasks_per_replica", type=int, default=16, help="tasks loaded per replica, the "
                           "least recently used leaving first (default: %(default)s)")  # fmt: skip
    ray_group.add_argument("--max_batch_size", type=int, default=16, help="default: %(default)s")
    ray_group.add_argument("--batch_wait_timeout_s", type=float, default=0.01, help="default: %(default)s")
    ray_group.add_argument("--num_cpus_per_replica", type=float, default=1.0, help="default: %(default)s")
    ray_group.add_argument("--num_gpus_per_replica", type=float, default=0.0, help="default: %(default)s")
    return parser


def serve_main(argv: list[str], block: bool = True) -> None:
    args = serve_parser().parse_args(argv)
    from .catalog import parse_task_option

    tasks: dict[str, str] = {}
    for value in args.task:
        name, source = parse_task_option(value)  # the name is checked with the others in task_catalog
        if name in tasks:
            raise ValueError(f"--task {name}=... is given twice: give each task one name.")
        tasks[name] = source
    # Imported after parsing: `--help` and argument errors answer without loading Ray or torch.
    from . import ApiLimits, ReplicaOptions, build_app, run_server, task_catalog

    catalog = task_catalog(tasks, args.set, revision=args.revision)
    replicas = ReplicaOptions(num_replicas=args.num_replicas, max_tasks_per_replica=args.max_tasks_per_replica,
                              max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_timeout_s,
                              num_cpus=args.num_cpus_per_replica, num_gpus=args.num_gpus_per_replica)  # fmt: skip
    limits = ApiLimits(max_request_bytes=args.max_request_bytes, max_prompts=args.max_prompts,
                       max_tokens=args.max_tokens, max_num_beams=args.max_num_beams)  # fmt: skip
    app = build_app(catalog, args.base_model_name_or_path, args.dect_backbone_name_or_path, replicas, limits,
                    max_input_tokens=args.max_input_tokens)  # fmt: skip
    print(f"hf-frozen serve: {len(catalog)} task(s) at http://{args.host}:{args.port}/v1 (GET /v1/models lists them)")
    run_server(app, host=args.host, port=args.port, address=args.address, block=block)
