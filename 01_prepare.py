"""Check the input data, split car-grouped folds, and cache what training reads.

    python 01_prepare.py --demo                     # write the synthetic demo data into input/, then prepare
    python 01_prepare.py --demo --demo-kind multiclass --input input/demo_multiclass   # aerial scenes, 5 classes
    python 01_prepare.py --input /data/carvana      # real Kaggle data
    python 01_prepare.py --preset cpu --input ../shared/carvana_sample --output out

Writes output/folds.csv (id, car (the group), view, fold) and output/cache/<H>x<W>/ for the preset's size.
Every problem in the input is reported with its file name, then the script exits non-zero.
Any names work (lib/layout.py): images train/<id>.<jpg|png|tif|bmp>, masks train_masks/<id>[_mask].<png|gif|tif|bmp>
or instance folders train_masks/<id>/; --mask-suffix and --group-regex say how yours are named and grouped. Without
train_masks/, a Kaggle train.csv of per-class RLE rows (Severstal's, Clouds': lib/kagglecsv.py) holds the truth.
"""
from __future__ import annotations

import time

import demo
import params
from lib import cache, files, folds, imageformat, inputs, kagglecsv, layout, tilecache
from lib.errors import run_main
from lib.task import Task

def main(p: params.Params) -> None:
    if p.demo:
        demo.write(p)
    start = time.perf_counter()
    task = Task.of(p)
    table, notes = inputs.check_train(p.input_dir, p.workers, p.mask_suffix, p.group_regex, p.rle_order, task)
    for note in notes:
        print(f"note: {note}")
    groups = layout.groups_of(list(table.id), p.group_regex)
    print(f"task: {task.describe()}")
    print(f"checked {len(table)} training images of {table.car.nunique()} {'cars' if groups.has_views else 'groups'} "
          f"in {p.input_dir} ({time.perf_counter() - start:.1f}s)")
    print(f"groups: {groups.rule}; {layout.group_summary(groups.groups)}"
          + ("" if groups.has_views else "; no views, so the baselines are global only"))
    check_test_set(p)
    meta_path = p.input_dir / files.METADATA_CSV
    metadata = inputs.read_metadata(meta_path) if meta_path.exists() else None
    split = folds.split(table, p.n_folds, p.seed, metadata)
    ids = list(split.id)
    fmt = imageformat.survey([image for image, _ in cache.pair_paths(p.input_dir, sorted(ids), p.mask_suffix,
                                                                         task)])
    imageformat.check_tiles(fmt, p.tile_size)
    if not fmt.rgb8:
        print(f"images: {fmt.describe()}; normalised by their own per-channel mean and std (recorded in "
              f"{imageformat.RECORD})")
    cache_images = cache.use_image_cache(cache.image_cache(p), len(ids), p.height, p.width, p.cache_budget_gb, fmt)
    largest = table.loc[(table.height * table.width).idxmax()]  # every truth row takes the largest image's bytes
    orig = (int(largest.height), int(largest.width))
    sources = cache.Sources(p.input_dir, cache.checked_sources(p.input_dir, table))  # the files as just read
    # free space, before any write:
    print(cache.check_free_space(p.output_dir, cache.disk_needed(p.output_dir, ids, orig, p.height, p.width,
                                                                 cache_images, p.mask_suffix, task, sources, fmt)))
    if p.tile_size:
        print(tilecache.disk_line(p.output_dir, ids, [(int(h), int(w)) for h, w in zip(table.height, table.width)],
                                  p.downscale, task, p.mask_suffix, sources))
    with files.exclusive(p.output_dir / files.LOCK, "this output folder's split and cache"):  # one 01 at a time
        written = folds.save(split, p.output_dir, p.force)
        per_fold = split.groupby("fold").agg(cars=("car", "nunique"), images=("id", "size"))
        print(f"{'wrote' if written else 'kept identical'} {files.folds_csv(p.output_dir)}: "
              + ", ".join(f"fold {k} {r.cars} {'cars' if groups.has_views else 'groups'}/{r.images} images"
                          for k, r in per_fold.iterrows()))
        imageformat.write_record(p.output_dir, fmt)  # before the cache, which reads it
        data = cache.open_for(p, ids, sources=sources)  # rebuilt where a source changed since it was made
        if p.tile_size:
            tilecache.open_for(p, ids, sources)
        params.save(p, p.output_dir / files.PREPARE_PARAMS)
    report_cache(p, data, len(ids))


def check_test_set(p: params.Params) -> None:
    listed = (p.input_dir / files.SAMPLE_SUBMISSION).exists()
    if (p.input_dir / files.TEST).is_dir():
        test_ids, _ = inputs.check_test(p.input_dir, Task.of(p))
        kagglecsv.check_order(p.input_dir / files.SAMPLE_SUBMISSION, p.rle_order)  # Kaggle's forms are column-major
        print(f"test: {len(test_ids)} images listed in {files.SAMPLE_SUBMISSION}, all present" if listed else
              f"test: {len(test_ids)} images in {files.TEST}/ (no {files.SAMPLE_SUBMISSION}: the submission lists "
              "every one, sorted by id, keyed by file name)")
    else:
        print(f"note: no {files.TEST}/ folder in {p.input_dir}; 03_predict.py needs one for test maps")


def report_cache(p: params.Params, data: cache.Cache, n: int) -> None:
    if p.tile_size:
        return print(f"training truth and tile cache ready in {p.output_dir / 'cache'}: 02 trains on tiles of "
                     f"{p.tile_size} px at 1/{p.downscale:g} scale")
    size = cache.projected_bytes(n, p.height, p.width, data.image_format) / cache.GB
    if data.cached:
        print(f"training cache ready: truth and {p.height}x{p.width} images in {p.output_dir / 'cache'} (--cache "
              f"{p.cache}: {size:.2f} GB <= --cache-budget-gb {p.cache_budget_gb:g}); training reads it through the "
              "page cache")
    else:
        print(f"training truth ready in {p.output_dir / 'cache'}; --cache {p.cache}: images at {p.height}x{p.width} "
              f"would take {size:.1f} GB, so training decodes each JPEG and mask in {p.workers} loader worker(s) "
              "(--workers) instead")


if __name__ == "__main__":
    p, _ = params.parse(__doc__, script="01_prepare.py")
    run_main(lambda: main(p))
