rule subset:
    output:
        manifest="results/data/{subset}/manifest.json",
        data="results/data/{subset}/data.pt",
    log:
        "results/logs/subset/{subset}.log",
    params:
        spec=lambda w: PLAN.subsets[w.subset]["spec"],
        seed=lambda w: PLAN.subsets[w.subset]["seed"],
        extra=lambda w: " ".join(
            (
                (
                    f"--root {PLAN.subsets[w.subset]['root']}"
                    if PLAN.subsets[w.subset]["root"]
                    else ""
                ),
                "--download" if PLAN.subsets[w.subset]["download"] else "",
                (
                    f"--resize {PLAN.subsets[w.subset]['resize']}"
                    if PLAN.subsets[w.subset]["resize"]
                    else ""
                ),
                (
                    f"--num-classes {PLAN.subsets[w.subset]['num_classes']}"
                    if PLAN.subsets[w.subset]["num_classes"]
                    else ""
                ),
            )
        ),
    shell:
        "lssr subset {params.spec} --seed {params.seed} {params.extra} --out results/data/{wildcards.subset} > {log} 2>&1"
