// nydus-image: builds, merges, checks and inspects nydus (RAFS) images.
// Everything lives in the builder library; see builder/cli.h.
#include "builder/cli.h"

int main(int argc, char** argv) { return nydus::builder::run_nydus_image(argc, argv); }
