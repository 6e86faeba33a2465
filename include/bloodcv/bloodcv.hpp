// Everything public in one include.
#pragma once

#include "bloodcv/box.hpp"
#include "bloodcv/nms.hpp"
#include "bloodcv/tiler.hpp"
#include "bloodcv/version.hpp"
