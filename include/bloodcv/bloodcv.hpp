// Everything public in one include.
#pragma once

#include "bloodcv/box.hpp"
#include "bloodcv/classifier.hpp"
#include "bloodcv/decoder.hpp"
#include "bloodcv/detector.hpp"
#include "bloodcv/eval.hpp"
#include "bloodcv/image.hpp"
#include "bloodcv/image_source.hpp"
#include "bloodcv/merge.hpp"
#include "bloodcv/nms.hpp"
#include "bloodcv/pipeline.hpp"
#include "bloodcv/report.hpp"
#include "bloodcv/stain.hpp"
#include "bloodcv/tiler.hpp"
#include "bloodcv/version.hpp"
