#!/bin/bash
# The study of docs/results (issue 4), reduced to what a 2-core CPU session allows:
# every method x 3 problems (default targets) x 3 seeds, then learning-rate windows (seed 0).
# Budget per run: 500 steps on 1000 collocation points (Burgers: + 300 L-BFGS iterations in the main
# sweep, none in the lr windows), every other setting at its default. About 45 minutes on 2 cores.
#   bash benchmarks/study.sh [STUDY_DIR] [REPORT_DIR]
set -euo pipefail
STUDY=${1:-study_runs}
REPORT=${2:-docs/results}
PY=${PYTHON:-python}
M=scratch,full,lora,rslora,loraplus,pissa,dora,asymlora,cola,rac,cla,rcla,c3la,rc3la,paca,riemannian,odlora,odelora
COMMON="hydra/launcher=local hydra.launcher.n_jobs=2 steps=500 n_points=1000 eval_every=50 progress=false plots=false device=cpu checkpoint_every=0"
for P in helmholtz allen_cahn burgers; do
  EXTRA=$([ "$P" = burgers ] && echo "lbfgs_steps=300" || echo "")
  $PY -m pinn_lora.adapt -m $COMMON problem=$P $EXTRA method=$M seed=0,1,2 hydra.sweep.dir=$STUDY/main/$P
done
for P in helmholtz allen_cahn burgers; do
  $PY -m pinn_lora.adapt -m $COMMON problem=$P lbfgs_steps=0 method=lora,riemannian,odlora,cla \
      method.lr=1e-4,1e-3,1e-2,1e-1,1 hydra.sweep.dir=$STUDY/lr/$P/adam
  $PY -m pinn_lora.adapt -m $COMMON problem=$P lbfgs_steps=0 method=odelora method.scheme=euler,rk4 \
      method.lr=1e-4,1e-3,1e-2,1e-1,1 hydra.sweep.dir=$STUDY/lr/$P/odelora
done
$PY -m pinn_lora.compare $STUDY/main --out $REPORT/study
$PY -m pinn_lora.compare $STUDY/lr --out $REPORT/lr_window --no-solutions
$PY benchmarks/study_tables.py $STUDY $REPORT
$PY -m pinn_lora.methods.sensing --plot $REPORT/sensing.png > $REPORT/sensing.txt
